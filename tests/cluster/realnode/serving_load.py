"""A steady stream of predict requests to a Serve job on the real node, and the record of every request.

The requests go straight to the pod addresses that the endpoint Service's EndpointSlices list as ready: the
real node runs no kube-proxy, so the Service's ClusterIP does not route. Each client does what kube-proxy (or
any endpoint-aware load balancer) does: it balances over the ready endpoints of the moment, round robin, as
the watch on the slices (tests/cluster/operator/endpoints.py) sees them. A connection that cannot be made
(refused, no route, no answer in CONNECT_TIMEOUT_SECONDS) is retried on the next endpoint, since nothing was
sent; every failure after the connection was made is a failed request.
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import signal
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tests.cluster.operator.endpoints import ReadyEndpoint

CONNECT_TIMEOUT_SECONDS = 3.0
REQUEST_TIMEOUT_SECONDS = 60.0
NO_ENDPOINT_WAIT_SECONDS = 0.05
RETRY_WAIT_SECONDS = 0.01
"""After a connection that could not be made: the next endpoint is tried a moment later, not in a busy loop."""


@dataclass(frozen=True)
class Answer:
    """One request: the input it sent (by index), where it went, when, and what came back."""

    index: int
    endpoint: ReadyEndpoint
    started: float
    """time.monotonic() before the endpoint was picked (its last attempt's, if connections failed)."""
    ended: float
    status: int | None
    """The HTTP status; None when the connection broke or timed out after it was made."""
    error: str = ""
    outputs: torch.Tensor | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def seconds(self) -> float:
        return self.ended - self.started


@dataclass
class LoadStream:
    """`clients` threads, each sending one request after the other (a closed loop, `pause_seconds` between
    them), input i % len(inputs) for the i-th request, until stopped."""

    endpoints: Callable[[], Sequence[ReadyEndpoint]]
    port: int
    inputs: Sequence[torch.Tensor]
    clients: int
    pause_seconds: float = 0.0
    keep_outputs: bool = True
    """False: the answer's body is read, not parsed (a benchmark's client must stay light)."""
    answers: list[Answer] = field(default_factory=list)
    not_connected: int = 0
    """Connections that could not be made (retried on the next endpoint)."""
    no_endpoint_waits: int = 0
    """Times a client found no ready endpoint and waited."""

    def __post_init__(self) -> None:
        self._bodies = [json.dumps({"inputs": x.tolist()}).encode() for x in self.inputs]
        self._counter = itertools.count()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._client, name=f"client-{n}", daemon=True)
            for n in range(self.clients)
        ]

    def __enter__(self) -> LoadStream:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(REQUEST_TIMEOUT_SECONDS + 5)

    def snapshot(self) -> list[Answer]:
        with self._lock:
            return list(self.answers)

    def wait_answers(self, count: int, timeout: float = 120.0, since: float = 0.0) -> None:
        """Waits until `count` requests started after `since` were answered successfully."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sum(1 for a in self.snapshot() if a.ok and a.started >= since) >= count:
                return
            time.sleep(0.1)
        raise AssertionError(f"fewer than {count} answers in {timeout} s: {summary(self.snapshot())}")

    def _client(self) -> None:
        while not self._stop.is_set():
            number = next(self._counter)
            index = number % len(self._bodies)
            answer = self._send(number, index)
            if answer is None:
                continue
            with self._lock:
                self.answers.append(answer)
            if self.pause_seconds:
                self._stop.wait(self.pause_seconds)

    def _send(self, number: int, index: int) -> Answer | None:
        """One request, retried on the next endpoint while no connection can be made; None once stopped."""
        attempt = 0
        while not self._stop.is_set():
            # Taken before the endpoint is picked: whether a request can have gone to an endpoint that had
            # left is judged against this time.
            started = time.monotonic()
            ready = self.endpoints()
            if not ready:
                with self._lock:
                    self.no_endpoint_waits += 1
                self._stop.wait(NO_ENDPOINT_WAIT_SECONDS)
                continue
            endpoint = ready[(number + attempt) % len(ready)]
            attempt += 1
            connection = http.client.HTTPConnection(
                endpoint.address, self.port, timeout=CONNECT_TIMEOUT_SECONDS
            )
            try:
                try:
                    connection.connect()
                except OSError:
                    with self._lock:
                        self.not_connected += 1
                    self._stop.wait(RETRY_WAIT_SECONDS)
                    continue
                assert connection.sock is not None
                connection.sock.settimeout(REQUEST_TIMEOUT_SECONDS)
                try:
                    connection.request(
                        "POST",
                        "/v1/predict",
                        self._bodies[index],
                        {"Content-Type": "application/json"},
                    )
                    response = connection.getresponse()
                    body = response.read()
                except (OSError, http.client.HTTPException) as error:
                    return Answer(index, endpoint, started, time.monotonic(), None, type(error).__name__)
                ended = time.monotonic()
                if response.status != 200:
                    return Answer(index, endpoint, started, ended, response.status, body[:200].decode())
                outputs = torch.tensor(json.loads(body)["outputs"]) if self.keep_outputs else None
                return Answer(index, endpoint, started, ended, 200, outputs=outputs)
            finally:
                connection.close()
        return None


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


def summary(answers: Sequence[Answer]) -> dict[str, object]:
    """Counts, rate and latencies of a list of answers (for messages and the benchmark)."""
    good = [a for a in answers if a.ok]
    span = (max(a.ended for a in answers) - min(a.started for a in answers)) if answers else 0.0
    latencies = [a.seconds for a in good]
    return {
        "requests": len(answers),
        "ok": len(good),
        "failed": len(answers) - len(good),
        "requests_per_second": round(len(good) / span, 2) if span else 0.0,
        "p50_ms": round(1000 * statistics.median(latencies), 1) if latencies else None,
        "p99_ms": round(1000 * percentile(latencies, 0.99), 1) if latencies else None,
        "by_pod": {
            pod: sum(1 for a in good if a.endpoint.pod == pod)
            for pod in sorted({a.endpoint.pod for a in good})
        },
    }


def worker_processes(pod_uid: str) -> list[int]:
    """Pids, as the host sees them, of the runtime's worker processes (`python -m maas_runtime`, not the
    agent that launched them) in the pod with this uid: the processes whose cgroup is the pod's."""
    marks = (f"pod{pod_uid}", f"pod{pod_uid.replace('-', '_')}")
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cgroups = (entry / "cgroup").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # it ended while we looked, or is not ours to read
            continue
        if any(mark in cgroups for mark in marks) and b"maas_runtime" in argv:
            found.append(int(entry.name))
    return found


def kill_worker_process(pod_uid: str) -> int:
    """SIGKILLs the runtime's worker process in that pod from the host (the image has no shell tools for
    `kubectl exec`; the host sees the container's processes); returns its host pid."""
    pids = worker_processes(pod_uid)
    assert len(pids) == 1, f"pod {pod_uid}: worker processes {pids}"
    os.kill(pids[0], signal.SIGKILL)
    return pids[0]
