"""Serve mode: batched requests through a 2-stage pipeline equal a single-process forward; health; drain."""

from __future__ import annotations

import json
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
from maas_api.spec import Mode, ServingSpec
from maas_runtime.launch import local_plan, start
from maas_runtime.model import InputSpec, run_model
from maas_runtime.serve import max_body_bytes

from tests.runtime import fuzz
from tests.runtime.reference import full_model
from tests.runtime.support import TINY_MLP, TINY_TRANSFORMER, TOLERANCE, free_port, http, wait_until

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(180)]


def test_serving_matches_the_whole_model_and_drains_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    plan = local_plan(
        "serve",
        TINY_TRANSFORMER,
        stages=2,
        microbatches=3,
        mode=Mode.SERVE,
        serving=ServingSpec(port=port, max_batch_size=6, max_batch_delay_ms=500),
    )
    job = start(plan, tmp_path / "run")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http("GET", f"{url}/healthz", timeout=2)[0] == 200, 120, "/healthz 200")
        units, heads = full_model(plan)
        generator = torch.Generator().manual_seed(0)
        requests = [torch.randint(0, 32, (n, 8), generator=generator) for n in (1, 2, 3, 5)]
        answers: dict[int, tuple[int, Any]] = {}

        def ask(i: int) -> None:
            answers[i] = http("POST", f"{url}/v1/predict", {"inputs": requests[i].tolist()})

        # Concurrent requests of different sizes share batches (1+2+3 fill 6, 5 waits for the next one).
        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(requests))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        with torch.no_grad():
            for i, inputs in enumerate(requests):
                status, body = answers[i]
                assert status == 200, body
                expected = run_model(units, heads, inputs)
                assert torch.tensor(body["outputs"]).sub(expected).abs().max() < TOLERANCE

        assert http("POST", f"{url}/v1/predict", {"inputs": [[1, 2]]})[0] == 400
        assert http("POST", f"{url}/v1/predict", {"inputs": [[0] * 8] * 7})[0] == 400
        assert http("POST", f"{url}/v1/predict", {"inputs": [[99] * 8]})[0] == 400
        assert http("POST", f"{url}/v1/predict", {"wrong": 1})[0] == 400
        status, metrics = http("GET", f"{url}/metrics")
        labels = '{job="serve",replica="0"}'
        assert status == 200 and f"maas_serve_requests_total{labels} 4.0" in metrics
        assert f"maas_serve_requests_in_flight{labels} 0.0" in metrics
        # The last batch held 6 samples (1+2+3) or 5, of maxBatchSize 6.
        # How requests group into batches depends on their timing (a loaded machine splits them): the fill of
        # the last batch is a fraction of the batch size, never zero or more than full.
        fill = next(
            line for line in metrics.splitlines() if line.startswith(f"maas_serve_batch_fill{labels} ")
        )
        assert 0.0 < float(fill.rsplit(" ", 1)[1]) <= 1.0, metrics

        # A request waiting for its batch (500 ms delay) when SIGTERM arrives is still answered; while it
        # waits, it is the load the autoscaling metric reports.
        late = threading.Thread(target=ask, args=(0,))
        late.start()
        time.sleep(0.2)
        assert f"maas_serve_requests_in_flight{labels} 1.0" in http("GET", f"{url}/metrics")[1]
        job.signal_workers(signal.SIGTERM)
        late.join(30)
        assert answers[0][0] == 200
    finally:
        result = job.wait(60)
    assert result.ok, result.describe()
    assert result.events("drained", rank=0)[0]["requests"] == 5
    # Buckets up to maxBatchSize (not a power of two); a full one runs the plan's 3 microbatches.
    serving = result.events("serving", rank=0)[0]
    assert (serving["buckets"], serving["microbatches"]) == ([1, 2, 4, 6], [1, 2, 2, 3])


def test_replicas_on_one_machine_survive_a_fuzzer(tmp_path: Path) -> None:
    """Two replicas under the local launcher listen on port and port + 1. Malformed requests to replica 0
    (the fuzzer's, 8 at a time) each get a 4xx, while valid requests to both replicas stay right and fast."""
    port = free_port(consecutive=2)
    serving = ServingSpec(port=port, max_batch_size=8, max_batch_delay_ms=5)
    plan = local_plan("fuzz", TINY_MLP, replicas=2, mode=Mode.SERVE, serving=serving)
    job = start(plan, tmp_path / "run")
    urls = [f"http://127.0.0.1:{port + replica}" for replica in range(2)]
    units, heads = full_model(plan)
    inputs = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = run_model(units, heads, inputs)
    stop, latencies = threading.Event(), []

    def good_client(url: str) -> None:
        while not stop.is_set():
            started = time.perf_counter()
            status, body = http("POST", f"{url}/v1/predict", {"inputs": inputs.tolist()})
            latencies.append(time.perf_counter() - started)
            assert status == 200, body
            assert torch.tensor(body["outputs"]).sub(expected).abs().max() < TOLERANCE

    try:
        for url in urls:
            wait_until(
                lambda url=url: http("GET", f"{url}/healthz", timeout=2)[0] == 200, 120, f"{url} ready"
            )
        valid = json.dumps({"inputs": inputs.tolist()}).encode()
        limit = max_body_bytes(InputSpec((8,), torch.float32), serving.max_batch_size)
        cases = fuzz.malformed_requests("/v1/predict", valid, limit, seed=1, mutations=200)
        clients = [threading.Thread(target=good_client, args=(url,)) for url in urls]
        for client in clients:
            client.start()
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda case: fuzz.send(port, case[1]), cases))
        stop.set()
        for client in clients:
            client.join(30)
        for (what, _), answer in zip(cases, answers, strict=True):
            fuzz.check_answer(what, answer)
        assert len(latencies) > 10 and max(latencies) < 5.0, (
            f"valid requests waited up to {max(latencies):.1f} s"
        )
        status, metrics = http("GET", f"{urls[0]}/metrics")
        assert status == 200 and 'maas_serve_rejected_total{job="fuzz",replica="0"}' in metrics
        job.signal_workers(signal.SIGTERM)
    finally:
        result = job.wait(60)
    assert result.ok, result.describe()
    assert [event["port"] for event in result.events("serving")] == [port, port + 1]
