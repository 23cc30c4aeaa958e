"""Measures the operator at scale on a fresh local cluster, with the operator running as a real process.

Usage: python benchmarks/operator_scale.py [--jobs 100] [--single-repeats 3] [--spare-nodes 2]

(a) One job of 8 one-GPU workers, applied alone: seconds from the apply to all 8 pods created, to all 8
    Running, and to the job's Ready condition (median of the repeats; each job is deleted before the next).
(b) `--jobs` such jobs applied at once (8 concurrent creates): per job, apply -> all pods created and -> all
    Running (p50/p99), and the total from the first apply to the last job Running.
(c) What the operator spent per job: its API requests (`maas_api_requests_total`, after minus before, by verb
    and kind) and its reconciles (`maas_reconcile_duration_seconds_count`); and its reconciles while nothing
    changes (node heartbeats, resync) after every job is Running.

Times come from watches opened before the first apply (pods and MaaSJobs, stamped with time.monotonic() when
each event arrives), not from polling, which would add load and coarsen the figures.
Reading (b): Ready lags Running because every reconcile worker that must place pods waits for the one
placement lock, so while a burst of new jobs is being placed no worker is free for the status-only reconciles
that would mark the placed jobs Ready; they come once the burst has drained.

Prints a table and writes results/operator_scale.json and .txt. Needs the control-plane binaries built; takes
about 2.5 minutes on 2 cores (102 nodes, 100 jobs).
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import platform
import socket
import ssl
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the operator-as-a-process helper lives with the cluster tests

from maas_api.job import API_VERSION, GROUP, KIND, PLURAL, VERSION  # noqa: E402
from maas_devcluster.apiclient import ApiClient  # noqa: E402
from maas_devcluster.control_plane import DevCluster, down, up  # noqa: E402
from maas_devcluster.pki import ADMIN, ClusterPki  # noqa: E402
from maas_devcluster.testing import LocalCluster, wait_until  # noqa: E402
from maas_devcluster.topology import load_cluster_description  # noqa: E402
from maas_operator import names  # noqa: E402

from tests.cluster.operator.support import OperatorProcess  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "operator_scale.json"
NAMESPACE = "bench"
STAGES, REPLICAS = 2, 4
WORKERS_PER_JOB = STAGES * REPLICAS
JOBS_PATH = f"/apis/{GROUP}/{VERSION}/namespaces/{NAMESPACE}/{PLURAL}"
PODS_WATCH = f"/api/v1/namespaces/{NAMESPACE}/pods?watch=1&labelSelector={names.JOB_LABEL}"
JOBS_WATCH = f"{JOBS_PATH}?watch=1"


def bench_job(name: str) -> dict[str, Any]:
    """8 one-GPU workers: the reference model in 2 stages x 4 data-parallel replicas."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "mode": "Train",
            "model": {"catalog": "LargeModel"},
            "split": {"stages": STAGES},
            "parallelism": {"replicas": REPLICAS, "microbatches": 4},
            "resources": {"gpus": 1},
        },
    }


@dataclass
class JobTimes:
    """Monotonic seconds of each milestone of one job, as the watches saw them."""

    applied: float = math.nan
    pods_created: dict[str, float] = field(default_factory=dict)
    pods_running: dict[str, float] = field(default_factory=dict)
    ready: float = math.nan

    def all_created(self) -> float:
        return max(self.pods_created.values()) if len(self.pods_created) >= WORKERS_PER_JOB else math.nan

    def all_running(self) -> float:
        return max(self.pods_running.values()) if len(self.pods_running) >= WORKERS_PER_JOB else math.nan

    def finished(self) -> bool:
        """Every pod Running and the job Ready."""
        return not math.isnan(self.ready) and not math.isnan(self.all_running())


class Timeline:
    """Milestones per job, filled by the watch threads."""

    def __init__(self) -> None:
        self.jobs: dict[str, JobTimes] = defaultdict(JobTimes)
        self.lock = threading.Lock()

    def on_pod(self, seen: float, event: dict[str, Any]) -> None:
        pod = event["object"]
        job = pod["metadata"]["labels"][names.JOB_LABEL]
        name = pod["metadata"]["name"]
        with self.lock:
            times = self.jobs[job]
            times.pods_created.setdefault(name, seen)
            if event["type"] != "DELETED" and (pod.get("status") or {}).get("phase") == "Running":
                times.pods_running.setdefault(name, seen)

    def on_job(self, seen: float, event: dict[str, Any]) -> None:
        job = event["object"]
        conditions = (job.get("status") or {}).get("conditions") or []
        if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
            with self.lock:
                times = self.jobs[job["metadata"]["name"]]
                if math.isnan(times.ready):
                    times.ready = seen

    def forget(self, job: str) -> None:
        with self.lock:
            self.jobs.pop(job, None)


class Watch(threading.Thread):
    """One streaming watch (from now on) that stamps every event with time.monotonic() on arrival."""

    def __init__(self, dev: DevCluster, path: str, on_event: Callable[[float, dict[str, Any]], None]) -> None:
        super().__init__(daemon=True, name=f"watch {path}")
        self.dev = dev
        self.path = path
        self.on_event = on_event
        self.socket: socket.socket | None = None
        self.started_watching = threading.Event()

    def run(self) -> None:
        certificates = ClusterPki(self.dev.layout.pki)
        tls = ssl.create_default_context(cafile=str(certificates.ca_cert))
        tls.load_cert_chain(str(certificates.client_cert(ADMIN)), str(certificates.client_key(ADMIN)))
        host, port = self.dev.server.removeprefix("https://").rsplit(":", 1)
        connection = http.client.HTTPSConnection(host, int(port), context=tls)
        connection.request("GET", self.path, headers={"Accept": "application/json"})
        self.socket = connection.sock
        answer = connection.getresponse()
        if answer.status != 200:
            raise RuntimeError(f"watch {self.path}: {answer.status} {answer.read()[:300]!r}")
        self.started_watching.set()
        while line := answer.readline():
            event = json.loads(line)
            if event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                self.on_event(time.monotonic(), event)

    def stop(self) -> None:
        # Shut the socket down rather than close the connection: closing waits for the reader's buffer
        # lock, which this thread holds while it blocks in readline (a deadlock); a shutdown ends that read.
        if self.socket is not None:
            self.socket.shutdown(socket.SHUT_RDWR)
        self.join(timeout=10)


def operator_counters(operator: OperatorProcess) -> dict[str, float]:
    """The operator's API requests by `verb kind`, and its reconciles, from its /metrics."""
    counters: dict[str, float] = {}
    for family in text_string_to_metric_families(operator.metrics()):
        for sample in family.samples:
            if sample.name == "maas_api_requests_total":
                counters[f"{sample.labels['verb']} {sample.labels['kind']}"] = sample.value
            elif sample.name == "maas_reconcile_duration_seconds_count":
                counters["reconciles"] = sample.value
            elif sample.name == "maas_reconcile_errors_total":
                counters["reconcile errors"] = sample.value
    return counters


def per_job(before: dict[str, float], after: dict[str, float], jobs: int) -> dict[str, float]:
    keys = sorted(set(before) | set(after))
    deltas = {key: after.get(key, 0.0) - before.get(key, 0.0) for key in keys}
    requests = sum(value for key, value in deltas.items() if key not in ("reconciles", "reconcile errors"))
    spent = {key: round(value / jobs, 2) for key, value in deltas.items() if value}
    spent["api requests (all)"] = round(requests / jobs, 2)
    return spent


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile (p99 of 100 values is the 99th smallest)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def seconds(value: float) -> float:
    return round(value, 3)


class Bench:
    def __init__(self, dev: DevCluster, operator: OperatorProcess) -> None:
        self.dev = dev
        self.cluster = LocalCluster(dev)
        self.client: ApiClient = dev.admin_client()
        self.operator = operator
        self.timeline = Timeline()

    @contextmanager
    def watching(self) -> Iterator[None]:
        watches = [
            Watch(self.dev, PODS_WATCH, self.timeline.on_pod),
            Watch(self.dev, JOBS_WATCH, self.timeline.on_job),
        ]
        for watch in watches:
            watch.start()
            if not watch.started_watching.wait(30):
                raise RuntimeError(f"{watch.name} did not start")
        try:
            yield
        finally:
            for watch in watches:
                watch.stop()

    def apply(self, name: str) -> None:
        with self.timeline.lock:
            self.timeline.jobs[name].applied = time.monotonic()
        self.client.create(JOBS_PATH, bench_job(name), exist_ok=False)

    def wait(self, what: str, done: Callable[[], bool], timeout: float) -> None:
        wait_until(what, done, timeout=timeout, interval=0.1)

    def delete_all(self) -> None:
        self.cluster.kubectl("-n", NAMESPACE, "delete", "maasjobs", "--all", "--wait=false")

        def no_pods() -> bool:
            listing = self.client.get_json(
                f"/api/v1/namespaces/{NAMESPACE}/pods?labelSelector={names.JOB_LABEL}"
            )
            return not listing["items"]

        self.wait("every benchmark pod gone", no_pods, timeout=300)

    def unfinished_report(self) -> str:
        """The jobs that have not reached Ready, with what their status says."""
        lines = []
        for job in self.client.get_json(JOBS_PATH)["items"]:
            status = job.get("status") or {}
            ready: dict[str, Any] = next(
                (c for c in status.get("conditions") or [] if c["type"] == "Ready"), {}
            )
            if ready.get("status") != "True":
                name = job["metadata"]["name"]
                times = self.timeline.jobs.get(name, JobTimes())
                lines.append(
                    f"{name}: phase {status.get('phase')}, readyWorkers {status.get('readyWorkers')}, "
                    f"Ready {ready.get('status')} ({ready.get('reason')}: {ready.get('message')}); watched "
                    f"{len(times.pods_created)} pods created, {len(times.pods_running)} Running"
                )
                pods = self.client.get_json(
                    f"/api/v1/namespaces/{NAMESPACE}/pods?labelSelector={names.JOB_LABEL}%3D{name}"
                )["items"]
                for pod in pods:
                    conditions = {c["type"]: c["status"] for c in pod["status"].get("conditions") or []}
                    lines.append(
                        f"  {pod['metadata']['name']}: {pod['status'].get('phase')}, Ready "
                        f"{conditions.get('Ready')}, resourceVersion {pod['metadata']['resourceVersion']}"
                    )
        return "\n".join(lines) or "every job is Ready"

    def single(self, repeats: int) -> dict[str, Any]:
        runs = []
        before = operator_counters(self.operator)
        for index in range(repeats):
            name = f"single-{index}"
            self.apply(name)
            times = self.timeline.jobs[name]
            self.wait(f"{name} Ready", times.finished, 120)
            runs.append(
                {
                    "created_s": seconds(times.all_created() - times.applied),
                    "running_s": seconds(times.all_running() - times.applied),
                    "ready_s": seconds(times.ready - times.applied),
                }
            )
            # Settle, so the counters include the reconciles that the job's last pod events cause.
            time.sleep(1.0)
        after = operator_counters(self.operator)
        self.delete_all()
        medians = {key: seconds(statistics.median(run[key] for run in runs)) for key in runs[0]}
        return {"runs": runs, "median": medians, "per_job": per_job(before, after, repeats)}

    def many(self, count: int, idle_seconds: float) -> dict[str, Any]:
        job_names = [f"job-{index:03d}" for index in range(count)]
        before = operator_counters(self.operator)
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(self.apply, job_names))
        applied_all = time.monotonic() - started

        def all_running() -> bool:
            with self.timeline.lock:
                return all(not math.isnan(self.timeline.jobs[name].all_running()) for name in job_names)

        self.wait(f"{count} jobs Running", all_running, timeout=900)
        total = time.monotonic() - started
        self.wait(
            f"{count} jobs Ready",
            lambda: all(not math.isnan(self.timeline.jobs[name].ready) for name in job_names),
            timeout=120,
        )
        time.sleep(1.0)
        after = operator_counters(self.operator)
        time.sleep(idle_seconds)
        idle = operator_counters(self.operator)
        jobs = [self.timeline.jobs[name] for name in job_names]
        created = [job.all_created() - job.applied for job in jobs]
        running = [job.all_running() - job.applied for job in jobs]
        ready = [job.ready - job.applied for job in jobs]
        return {
            "jobs": count,
            "apply_all_s": seconds(applied_all),
            "total_to_all_running_s": seconds(total),
            "created_s": {
                "p50": seconds(percentile(created, 0.5)),
                "p99": seconds(percentile(created, 0.99)),
            },
            "running_s": {
                "p50": seconds(percentile(running, 0.5)),
                "p99": seconds(percentile(running, 0.99)),
            },
            "ready_s": {"p50": seconds(percentile(ready, 0.5)), "p99": seconds(percentile(ready, 0.99))},
            "per_job": per_job(before, after, count),
            "idle": {
                "seconds": idle_seconds,
                "reconciles": idle.get("reconciles", 0) - after.get("reconciles", 0),
                "api_requests": sum(
                    idle[key] - after.get(key, 0.0)
                    for key in idle
                    if key not in ("reconciles", "reconcile errors")
                ),
            },
        }


def format_report(result: dict[str, Any]) -> str:
    single, many = result["single"], result["many"]
    lines = [
        f"operator at scale: {result['nodes']} fake nodes x 8 GPUs, jobs of {WORKERS_PER_JOB} one-GPU workers "
        f"({STAGES} stages x {REPLICAS} replicas); {result['machine']['cpus']} CPUs",
        "",
        f"{'':34}{'created':>10}{'Running':>10}{'Ready':>10}",
        f"{'(a) one job, median of ' + str(len(single['runs'])):34}"
        + "".join(f"{single['median'][key]:>9.2f}s" for key in ("created_s", "running_s", "ready_s")),
    ]
    for share in ("p50", "p99"):
        label = f"(b) {many['jobs']} jobs at once, {share}"
        lines.append(
            f"{label:34}"
            + "".join(f"{many[key][share]:>9.2f}s" for key in ("created_s", "running_s", "ready_s"))
        )
    lines += [
        f"(b) all {many['jobs']} applied in {many['apply_all_s']:.2f} s; all Running "
        f"{many['total_to_all_running_s']:.2f} s after the first apply",
        "",
        f"(c) per job{'':22}{'(a)':>10}{'(b)':>10}",
    ]
    keys = sorted(set(single["per_job"]) | set(many["per_job"]), key=lambda k: (k != "api requests (all)", k))
    for key in keys:
        lines.append(
            f"    {key:30}{single['per_job'].get(key, 0):>10.2f}{many['per_job'].get(key, 0):>10.2f}"
        )
    idle = many["idle"]
    if result["note"]:
        lines.insert(1, f"note: {result['note']}")
    lines.append(
        f"idle, every job Running: {idle['reconciles']:.0f} reconciles and {idle['api_requests']:.0f} API "
        f"requests in {idle['seconds']:.0f} s"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=100, help="jobs applied at once in (b)")
    parser.add_argument("--single-repeats", type=int, default=3, help="repeats of (a)")
    parser.add_argument("--spare-nodes", type=int, default=2, help="nodes beyond what the jobs fill")
    parser.add_argument("--idle-seconds", type=float, default=20.0, help="idle watch after (b)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument(
        "--note", default="", help="a line saved with the results (e.g. which operator build)"
    )
    arguments = parser.parse_args(argv)
    gpus_per_node = load_cluster_description().pools[0].gpus_per_node
    nodes = math.ceil(arguments.jobs * WORKERS_PER_JOB / gpus_per_node) + arguments.spare_nodes
    cluster = load_cluster_description().with_node_count(nodes)
    with tempfile.TemporaryDirectory(prefix="maas-bench-operator-") as scratch:
        state_dir = Path(scratch) / "cluster"
        print(f"starting a local cluster of {nodes} nodes in {state_dir}", file=sys.stderr, flush=True)
        dev = up(state_dir, cluster, timeout_seconds=600)
        operator = OperatorProcess(LocalCluster(dev), Path(scratch))
        bench = Bench(dev, operator)
        try:
            local = LocalCluster(dev)
            local.kubectl("apply", "--server-side", "-f", str(REPO / "crds" / "maasjob.yaml"))
            local.kubectl("wait", "--for=condition=Established", "crd/maasjobs.maas.dev", "--timeout=60s")
            local.kubectl("create", "namespace", NAMESPACE)
            operator.start()
            with bench.watching():
                print("(a) one job at a time", file=sys.stderr, flush=True)
                single = bench.single(arguments.single_repeats)
                print(f"(b) {arguments.jobs} jobs at once", file=sys.stderr, flush=True)
                many = bench.many(arguments.jobs, arguments.idle_seconds)
            operator_log_tail = operator.log_text().splitlines()[-5:]
        except AssertionError:
            # A milestone never came: show what the jobs and the operator say before the cluster goes.
            print(bench.unfinished_report(), file=sys.stderr)
            print(
                "operator log (tail):\n" + "\n".join(operator.log_text().splitlines()[-40:]), file=sys.stderr
            )
            raise
        finally:
            operator.stop()
            down(state_dir)
    result = {
        "measured_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "note": arguments.note,
        "nodes": nodes,
        "workers_per_job": WORKERS_PER_JOB,
        "single": single,
        "many": many,
        "operator_log_tail": operator_log_tail,
    }
    report = format_report(result)
    print(report)
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text(json.dumps(result, indent=2) + "\n")
    arguments.output.with_suffix(".txt").write_text(report + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
