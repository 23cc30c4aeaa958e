"""Serving on the real node: requests/s and p50/p99 latency of the pipelined serve path against a
single-process server of the same model and batch settings, and the same during a rolling update.

Usage (root, one real node per machine: `flock /tmp/heavy.lock python benchmarks/serving.py`):
    python benchmarks/serving.py [--seconds 15] [--rounds 2] [--clients 1 8 64]

One real-node cluster (`up --real-node`) and the operator as a process with the node's settings. Two Serve jobs
of one Transformer (vocab 64, dim 128, 8 layers, 4 heads, 32 tokens; float32), both with maxBatchSize 16,
maxBatchDelayMs 5 and one replica, without GPUs on the real node:
- `pipelined`: 2 pipeline stages, two worker pods (the serve path: batcher -> control broadcast -> schedule ->
  last stage sends the outputs back to the first);
- `single`: 1 stage, one worker process (the same HTTP front and batcher, no pipeline).
Clients are threads of this process, each a closed loop of one-sample requests, sent straight to the ready
pod address of the job's `<job>-endpoint` EndpointSlices (no kube-proxy on the real node). In each round,
every (clients, job) pair runs for --seconds after a short warm-up, in an order that rotates per round, so
machine load hits both jobs alike; the ratio pipelined / single is taken per round, then the median.
Then, per client count, one rolling update of `pipelined` (2 <-> 3 stages, maxSurge 1, maxUnavailable 0)
under that load, measured from the apply to RolloutComplete, failed requests counted.
The workers and the clients share this machine's cores: the load average is printed beside the figures.
Writes benchmarks/results/serving.json, .txt and .png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the operator-as-a-process and load helpers live with the cluster tests

import torch  # noqa: E402
from kubernetes import client as k8s  # noqa: E402
from kubernetes import config as k8s_config  # noqa: E402
from maas_devcluster.control_plane import down, up  # noqa: E402
from maas_devcluster.testing import LocalCluster, wait_until  # noqa: E402
from maas_devcluster.topology import ClusterDescription, NodePool  # noqa: E402

from tests.cluster.operator.endpoints import EndpointRecord  # noqa: E402
from tests.cluster.operator.support import Jobs, OperatorProcess, install_crd, load_example  # noqa: E402
from tests.cluster.realnode.serving_load import Answer, LoadStream, percentile  # noqa: E402
from tests.cluster.realnode.support import ON_REAL_NODE  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
PORT = 8080
VOCAB, SEQ_LEN = 64, 32
MODEL_ARGS = {"vocab": VOCAB, "dim": 128, "layers": 8, "heads": 4, "seqLen": SEQ_LEN}
MAX_BATCH, MAX_DELAY_MS = 16, 5
WARMUP_SECONDS = 3.0
JOBS = {"pipelined": 2, "single": 1}
"""Job name -> pipeline stages."""


def serve_job(name: str, stages: int) -> dict[str, Any]:
    job = load_example("transformer-serve.yaml")
    job["metadata"]["name"] = name
    spec = job["spec"]
    spec["model"]["args"] = dict(MODEL_ARGS)
    spec["model"]["dtype"] = "float32"
    spec["split"]["stages"] = stages
    spec["parallelism"]["replicas"] = 1
    spec["serving"].update(maxBatchSize=MAX_BATCH, maxBatchDelayMs=MAX_DELAY_MS, drainSeconds=3)
    spec["resources"] = {"gpus": 0}
    spec["placement"] = {"nodeSelector": ON_REAL_NODE}
    return job


def window(answers: list[Answer], start: float, end: float) -> dict[str, Any]:
    """Requests answered within [start, end]: their rate and latencies; failures started in it."""
    done = [a for a in answers if start <= a.ended <= end]
    good = [a.seconds for a in done if a.ok]
    failures = Counter(
        f"HTTP {a.status}" if a.status is not None else a.error
        for a in answers
        if start <= a.started <= end and not a.ok
    )
    return {
        "requests_per_second": len(good) / (end - start),
        "p50_ms": 1000 * statistics.median(good) if good else float("nan"),
        "p99_ms": 1000 * percentile(good, 0.99) if good else float("nan"),
        "answered": len(good),
        "failed": sum(failures.values()),
        "failures": dict(failures),
    }


def steady(
    record: EndpointRecord, clients: int, seconds: float, inputs: list[torch.Tensor]
) -> dict[str, Any]:
    with LoadStream(record.ready_endpoints, PORT, inputs, clients, keep_outputs=False) as stream:
        time.sleep(WARMUP_SECONDS)
        start = time.monotonic()
        time.sleep(seconds)
        end = time.monotonic()
        answers = stream.snapshot()
    return {**window(answers, start, end), "load_average": os.getloadavg()[0]}


def rollout(
    jobs: Jobs, record: EndpointRecord, clients: int, stages: int, inputs: list[torch.Tensor]
) -> dict[str, Any]:
    """Rolls `pipelined` to `stages` under `clients` clients; measured from the apply to RolloutComplete."""
    name = record.job
    with LoadStream(record.ready_endpoints, PORT, inputs, clients, keep_outputs=False) as stream:
        time.sleep(WARMUP_SECONDS)
        start = time.monotonic()
        generation = int(jobs.get(name)["metadata"]["generation"])
        jobs.apply(serve_job(name, stages))

        def complete() -> bool:
            job = jobs.get(name)
            status = job.get("status") or {}
            progressing: dict[str, Any] = next(
                (c for c in status.get("conditions", []) if c["type"] == "Progressing"), {}
            )
            return (
                int(job["metadata"]["generation"]) > generation
                and status.get("observedGeneration") == job["metadata"]["generation"]
                and progressing.get("reason") == "RolloutComplete"
                and status.get("readyReplicas") == 1
            )

        wait_until(f"{name} rolled to {stages} stages", complete, timeout=600, interval=1.0)
        end = time.monotonic()
        answers = stream.snapshot()
        not_connected = stream.not_connected
    return {
        **window(answers, start, end),
        "seconds": end - start,
        "to_stages": stages,
        "not_connected": not_connected,
        "fewest_ready": record.fewest_ready,
        "load_average": os.getloadavg()[0],
    }


def spread(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
    }


def measure(arguments: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    state_dir = scratch / "c"
    running = up(state_dir, ClusterDescription(name="serving", pools=(NodePool(count=1),)), real_node=True)
    try:
        node = running.real_node()
        assert node is not None
        cluster = LocalCluster(running)
        install_crd(cluster)
        operator = OperatorProcess(cluster, scratch, environment=node.operator_environment())
        operator.start()
        api = k8s_config.new_client_from_config(config_file=str(cluster.kubeconfig))  # type: ignore[no-untyped-call]
        core, discovery = k8s.CoreV1Api(api), k8s.DiscoveryV1Api(api)
        jobs = Jobs(cluster, "default")
        records = {name: EndpointRecord(core, discovery, "default", name) for name in JOBS}
        try:
            for record in records.values():
                record.__enter__()
            for name, stages in JOBS.items():
                jobs.apply(serve_job(name, stages))
            for name, record in records.items():
                record.wait_ready([f"{name}-r0-s0"], timeout=600)
            generator = torch.Generator().manual_seed(0)
            inputs = [torch.randint(0, VOCAB, (1, SEQ_LEN), generator=generator) for _ in range(16)]
            runs: dict[str, dict[int, list[dict[str, Any]]]] = {
                name: {clients: [] for clients in arguments.clients} for name in JOBS
            }
            pairs = [(clients, name) for clients in arguments.clients for name in JOBS]
            for round_ in range(arguments.rounds):
                shift = round_ % len(pairs)
                for clients, name in pairs[shift:] + pairs[:shift]:
                    result = steady(records[name], clients, arguments.seconds, inputs)
                    runs[name][clients].append(result)
                    print(
                        f"round {round_} {name:>9} {clients:>3} clients: {result['requests_per_second']:7.1f}"
                        f" req/s, p50 {result['p50_ms']:7.1f} ms, p99 {result['p99_ms']:7.1f} ms"
                        f" (load {result['load_average']:.1f})",
                        flush=True,
                    )
            rollouts = []
            stages = JOBS["pipelined"]
            for clients in arguments.clients:
                stages = 3 if stages == 2 else 2
                records["pipelined"].arm(1)
                result = rollout(jobs, records["pipelined"], clients, stages, inputs)
                rollouts.append({"clients": clients, **result})
                print(
                    f"rolling update to {stages} stages, {clients:>3} clients: {result['seconds']:.0f} s,"
                    f" {result['requests_per_second']:.1f} req/s, p50 {result['p50_ms']:.1f} ms,"
                    f" p99 {result['p99_ms']:.1f} ms, {result['failed']} failed {result['failures']}",
                    flush=True,
                )
        finally:
            for record in records.values():
                record.__exit__()
            operator.stop()
    finally:
        down(state_dir)
    # Endpoint checks at every slice change (a ready endpoint with a stage down, fewer than the minimum ready).
    violations = [v for record in records.values() for v in record.violations]
    return {"runs": runs, "rollouts": rollouts, "endpoint_violations": violations}


def summarize(measured: dict[str, Any], clients_list: list[int]) -> dict[str, Any]:
    runs = measured["runs"]
    table: dict[str, Any] = {}
    for clients in clients_list:
        row: dict[str, Any] = {}
        for name in JOBS:
            for key in ("requests_per_second", "p50_ms", "p99_ms"):
                row[f"{name}_{key}"] = spread([r[key] for r in runs[name][clients]])
        pairs = list(zip(runs["pipelined"][clients], runs["single"][clients], strict=True))
        for key in ("requests_per_second", "p50_ms", "p99_ms"):
            row[f"ratio_{key}"] = spread([p[key] / s[key] for p, s in pairs])
        row["failed"] = sum(r["failed"] for name in JOBS for r in runs[name][clients])
        row["load_average"] = spread([r["load_average"] for name in JOBS for r in runs[name][clients]])
        table[str(clients)] = row
    return table


def format_table(results: dict[str, Any]) -> str:
    lines = [
        f"serving on the real node ({results['machine']}; load average {results['load_average_at_start']:.2f}"
        f" at start, {results['load_average_at_end']:.2f} at end)",
        f"model Transformer {MODEL_ARGS}, maxBatchSize {MAX_BATCH}, maxBatchDelayMs {MAX_DELAY_MS},"
        f" one replica; {results['rounds']} rounds of {results['seconds']} s per (clients, job);"
        " medians over rounds",
        "",
        f"{'clients':>7} {'job':>10} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'load':>5}",
    ]
    for clients, row in results["steady"].items():
        for name in JOBS:
            lines.append(
                f"{clients:>7} {name:>10} {row[f'{name}_requests_per_second']['median']:>8.1f}"
                f" {row[f'{name}_p50_ms']['median']:>8.1f} {row[f'{name}_p99_ms']['median']:>8.1f}"
                f" {row['load_average']['median']:>5.1f}"
            )
        lines.append(
            f"{clients:>7} {'ratio':>10} {row['ratio_requests_per_second']['median']:>8.2f}"
            f" {row['ratio_p50_ms']['median']:>8.2f} {row['ratio_p99_ms']['median']:>8.2f}"
            "   pipelined / single"
        )
    lines += [
        "",
        "rolling update of `pipelined` under load (apply -> RolloutComplete), against its steady figures",
        f"{'clients':>7} {'stages':>8} {'seconds':>8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'failed':>7}"
        f" {'rps/steady':>10} {'load':>5}",
    ]
    for rollout in results["rollouts"]:
        steady = results["steady"][str(rollout["clients"])]["pipelined_requests_per_second"]["median"]
        lines.append(
            f"{rollout['clients']:>7} {'->' + str(rollout['to_stages']):>8} {rollout['seconds']:>8.0f}"
            f" {rollout['requests_per_second']:>8.1f} {rollout['p50_ms']:>8.1f} {rollout['p99_ms']:>8.1f}"
            f" {rollout['failed']:>7} {rollout['requests_per_second'] / steady:>10.2f}"
            f" {rollout['load_average']:>5.1f}"
        )
    lines.append(
        "endpoint violations (a ready endpoint with a stage down, too few ready):"
        f" {len(results['endpoint_violations'])}"
    )
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clients = list(results["steady"])
    series = {
        "pipelined (2 stages)": [
            results["steady"][c]["pipelined_requests_per_second"]["median"] for c in clients
        ],
        "single process": [results["steady"][c]["single_requests_per_second"]["median"] for c in clients],
        "pipelined, rolling update": [r["requests_per_second"] for r in results["rollouts"]],
    }
    latency = {
        "pipelined p50": [results["steady"][c]["pipelined_p50_ms"]["median"] for c in clients],
        "pipelined p99": [results["steady"][c]["pipelined_p99_ms"]["median"] for c in clients],
        "single p50": [results["steady"][c]["single_p50_ms"]["median"] for c in clients],
        "single p99": [results["steady"][c]["single_p99_ms"]["median"] for c in clients],
        "rolling update p50": [r["p50_ms"] for r in results["rollouts"]],
        "rolling update p99": [r["p99_ms"] for r in results["rollouts"]],
    }
    figure, (rate, times) = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(series)
    for offset, (label, values) in enumerate(series.items()):
        rate.bar(
            [i + offset * width for i in range(len(clients))], values[: len(clients)], width, label=label
        )
    rate.set_xticks([i + width for i in range(len(clients))], clients)
    rate.set_xlabel("concurrent clients")
    rate.set_ylabel("requests/s")
    rate.legend(fontsize=8)
    for label, values in latency.items():
        times.plot(
            clients[: len(values)], values, marker="o", linestyle="--" if "p99" in label else "-", label=label
        )
    times.set_yscale("log")
    times.set_xlabel("concurrent clients")
    times.set_ylabel("latency (ms)")
    times.legend(fontsize=7)
    figure.suptitle(
        f"Serving on the real node ({results['machine']}, load {results['load_average_at_start']:.1f})"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 64])
    arguments = parser.parse_args()
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
        "load_average_at_start": os.getloadavg()[0],
        "model": {"catalog": "Transformer", "args": MODEL_ARGS, "dtype": "float32"},
        "serving": {"maxBatchSize": MAX_BATCH, "maxBatchDelayMs": MAX_DELAY_MS, "replicas": 1},
        "seconds": arguments.seconds,
        "rounds": arguments.rounds,
    }
    # A short folder: the node's unix sockets live in it.
    with tempfile.TemporaryDirectory(prefix="sv-", dir="/tmp") as scratch:
        measured = measure(arguments, Path(scratch))
    results["load_average_at_end"] = os.getloadavg()[0]
    results["steady"] = summarize(measured, arguments.clients)
    results["rollouts"] = measured["rollouts"]
    results["endpoint_violations"] = measured["endpoint_violations"]
    results["raw"] = measured["runs"]
    text = format_table(results)
    print(text)
    (RESULTS / "serving.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "serving.txt").write_text(text)
    plot(results, RESULTS / "serving.png")
    print("written to benchmarks/results/serving.{json,txt,png}")


if __name__ == "__main__":
    main()
