"""Job controllers side by side on one fresh local cluster: Kubeflow's training-operator, JobSet and our operator.

Usage:
  python benchmarks/operator_scale.py [--jobs 100] [--repeats 3]     # the three rows (writes operator_scale.*)
  python benchmarks/operator_scale.py --controllers maas-operator --jobs 10 --repeats 1 --output FILE
  python benchmarks/operator_scale.py --scale [--nodes 1000]         # our operator past the anchors
                                                                     # (writes operator_scale_1000.*)

Comparison (the default). One cluster with enough kwok nodes (8 GPUs each); each controller runs as a local
process, one at a time (started, measured, its jobs deleted, stopped by pid, its webhook configurations
deleted), in rotating rounds so a change of the machine's load hits every controller alike. A round applies
`--jobs` jobs of 4 pods x 1 GPU at once (8 concurrent clients): PyTorchJobs of 1 Master + 3 Workers, JobSets of
one indexed Job of 4 pods, MaaSJobs of 2 stages x 2 replicas. Per controller and round:
- apply -> all of a job's pods created, and -> all Running: p50/p99 over the jobs (from one pod watch opened
  before the apply, every event stamped on arrival); first apply -> last job Running;
- API requests per job: the API server's `apiserver_request_total` over the round (until every job Running,
  plus a few seconds for trailing status writes), less the idle rate measured just before with the controller
  running (node leases, the controllers' own chatter), divided by the jobs;
- the controller's CPU seconds over the round and its peak resident memory (VmHWM);
- gang: the longest time a job had only part of its pods created, and how many jobs had a pod bound to a node
  before their last pod existed (a partial gang holding GPUs).
The report gives the median over the rounds, with the machine's load beside every figure.

Scale (`--scale`): our operator alone on `--nodes` kwok nodes, jobs of 8 pods (2 stages x 4 replicas): waves of
10, 100 and 1,000 jobs (the per-job cost at each), reconcile time p99, operator memory, request rates; then the
operator restarted with every job present: time until in sync (every job reconciled, queue empty) and the pods
created or deleted meanwhile (must be 0). Planning and steady-state decision time with 100, 1,000 and 10,000
nodes (in-process, no cluster) go in the same table.

Needs the control plane (hack/build-control-plane.sh) and, for the anchors, hack/build-anchors.sh; an anchor
that is not built is reported as such and the others still run.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import platform
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent))
from maas_devcluster.control_plane import DevCluster, down, up
from maas_devcluster.pki import ADMIN, ClusterPki
from maas_devcluster.testing import LocalCluster, wait_until
from maas_devcluster.topology import load_cluster_description
from scale_controllers import (
    BENCH_LABEL,
    CONTROLLERS,
    PODS_PER_JOB,
    REPO,
    JobController,
    MaaSOperator,
    maasjob,
    process_cpu_seconds,
)

RESULTS = Path(__file__).resolve().parent / "results"
NAMESPACE = "bench"
PODS_WATCH = f"/api/v1/pods?watch=1&labelSelector={BENCH_LABEL}"
SETTLE_SECONDS = 3.0
"""After the last job is Running: trailing status writes still belong to the round."""


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile (p99 of 100 values is the 99th smallest)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)] if ordered else math.nan


def rounded(value: float, digits: int = 3) -> float:
    return round(value, digits)


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def component_cpu_seconds(dev: DevCluster) -> dict[str, float]:
    """CPU seconds so far of every control-plane component, and of this benchmark process (its watch)."""
    seconds = {}
    for name, pid in dev.state.pids.items():
        try:
            seconds[name] = process_cpu_seconds(pid)
        except OSError:
            continue
    seconds["benchmark"] = time.process_time()
    return seconds


def peak_rss_bytes(pid: int) -> int:
    """The process's peak resident memory so far (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


# -- watching pods -----------------------------------------------------------------------------------------


@dataclass
class PodTimes:
    created: float
    bound: float = math.nan
    running: float = math.nan


@dataclass
class Timeline:
    """Per job (by BENCH_LABEL), per pod: when the watch saw it created, bound to a node and Running."""

    jobs: dict[str, dict[str, PodTimes]] = field(default_factory=lambda: defaultdict(dict))
    events: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_pod(self, seen: float, event: dict[str, Any]) -> None:
        pod = event["object"]
        metadata = pod["metadata"]
        job = metadata["labels"][BENCH_LABEL]
        with self.lock:
            self.events[event["type"]] += 1
            times = self.jobs[job].setdefault(metadata["uid"], PodTimes(created=seen))
            if event["type"] == "DELETED":
                return
            if math.isnan(times.bound) and (pod.get("spec") or {}).get("nodeName"):
                times.bound = seen
            if math.isnan(times.running) and (pod.get("status") or {}).get("phase") == "Running":
                times.running = seen

    def pods(self, job: str) -> list[PodTimes]:
        with self.lock:
            return list(self.jobs.get(job, {}).values())


class Watch(threading.Thread):
    """One streaming watch that stamps every event with time.monotonic() on arrival. A stream that ends or
    breaks is resumed from the last resourceVersion seen (said on stderr), so no event is lost; `failure` is
    set when it cannot be resumed."""

    def __init__(self, dev: DevCluster, path: str, on_event: Callable[[float, dict[str, Any]], None]) -> None:
        super().__init__(daemon=True, name=f"watch {path}")
        self.dev = dev
        self.path = path
        self.on_event = on_event
        self.socket: socket.socket | None = None
        self.started_watching = threading.Event()
        self.stopping = threading.Event()
        self.failure: BaseException | None = None
        self.resumed = 0

    def run(self) -> None:
        certificates = ClusterPki(self.dev.layout.pki)
        tls = ssl.create_default_context(cafile=str(certificates.ca_cert))
        tls.load_cert_chain(str(certificates.client_cert(ADMIN)), str(certificates.client_key(ADMIN)))
        host, port = self.dev.server.removeprefix("https://").rsplit(":", 1)
        version = ""
        while not self.stopping.is_set():
            path = (
                self.path
                if not version
                else f"{self.path.split('&resourceVersion=')[0]}&resourceVersion={version}"
            )
            try:
                connection = http.client.HTTPSConnection(host, int(port), context=tls)
                connection.request("GET", path, headers={"Accept": "application/json"})
                self.socket = connection.sock
                answer = connection.getresponse()
                if answer.status != 200:
                    raise RuntimeError(f"watch {path}: {answer.status} {answer.read()[:300]!r}")
                self.started_watching.set()
                while line := answer.readline():
                    event = json.loads(line)
                    if event.get("type") == "ERROR":
                        raise RuntimeError(f"watch {path}: {event.get('object')}")
                    version = event["object"]["metadata"].get("resourceVersion") or version
                    if event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                        self.on_event(time.monotonic(), event)
                reason = "the stream ended"
            except (OSError, ValueError, http.client.HTTPException) as error:
                reason = repr(error)
            except RuntimeError as error:
                self.failure = error
                return
            if self.stopping.is_set():
                return
            if not version:
                self.failure = RuntimeError(f"watch {path}: {reason} before any event")
                return
            self.resumed += 1
            print(f"watch {self.path}: {reason}; resumed at {version}", file=sys.stderr, flush=True)
            time.sleep(0.2)

    def stop(self) -> None:
        self.stopping.set()
        # Shut the socket down rather than close the connection: closing waits for the reader's buffer
        # lock, which this thread holds while it blocks in readline (a deadlock); a shutdown ends that read.
        sock, self.socket = self.socket, None
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
        self.join(timeout=10)


@contextmanager
def watching(
    dev: DevCluster, path: str, on_event: Callable[[float, dict[str, Any]], None]
) -> Iterator[Watch]:
    watch = Watch(dev, path, on_event)
    watch.start()
    if not watch.started_watching.wait(30):
        raise RuntimeError(f"{watch.name} did not start: {watch.failure}")
    try:
        yield watch
    finally:
        watch.stop()


# -- counters ----------------------------------------------------------------------------------------------


def apiserver_requests(dev: DevCluster) -> Counter[str]:
    """`apiserver_request_total` by `VERB resource`, summed over codes and other labels."""
    counts: Counter[str] = Counter()
    text = dev.admin_client().request("GET", "/metrics", timeout=30).body.decode()
    for family in text_string_to_metric_families(text):
        if family.name != "apiserver_request":
            continue
        for sample in family.samples:
            if sample.name == "apiserver_request_total":
                counts[f"{sample.labels.get('verb')} {sample.labels.get('resource')}"] += int(sample.value)
    return counts


def operator_counters(metrics_text: str) -> dict[str, Any]:
    """Our operator's own figures from its /metrics: requests by `verb kind`, reconciles, the reconcile-time
    histogram (cumulative counts by upper bound) and the queue depth."""
    requests: Counter[str] = Counter()
    buckets: dict[float, float] = {}
    figures: dict[str, Any] = {"requests": requests, "reconcile_buckets": buckets}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == "maas_api_requests_total":
                requests[f"{sample.labels['verb']} {sample.labels['kind']}"] += int(sample.value)
            elif sample.name == "maas_reconcile_duration_seconds_count":
                figures["reconciles"] = sample.value
            elif sample.name == "maas_reconcile_duration_seconds_bucket":
                buckets[float(sample.labels["le"])] = sample.value
            elif sample.name == "maas_workqueue_depth":
                figures["queue"] = sample.value
            elif sample.name == "maas_reconcile_errors_total":
                figures["errors"] = sample.value
    return figures


def histogram_quantile(before: dict[float, float], after: dict[float, float], share: float) -> float:
    """The upper bound of the bucket holding the `share` quantile of the observations between two scrapes."""
    bounds = sorted(after)
    counts = [after[bound] - before.get(bound, 0.0) for bound in bounds]
    total = counts[-1] if counts else 0.0
    for bound, cumulative in zip(bounds, counts, strict=True):
        if total and cumulative >= share * total:
            return bound
    return math.nan


# -- one round of one controller ---------------------------------------------------------------------------


@dataclass
class Round:
    controller: JobController
    dev: DevCluster
    jobs: int
    pods_per_job: int
    make_job: Callable[[str], dict[str, Any]]
    prefix: str
    idle_seconds: float = 20.0
    timeout: float = 900.0

    def job_names(self) -> list[str]:
        return [f"{self.prefix}-{index:04d}" for index in range(self.jobs)]

    def idle_rate(self) -> float:
        """API requests a second with the controller running and nothing to do."""
        before, started = sum(apiserver_requests(self.dev).values()), time.monotonic()
        time.sleep(self.idle_seconds)
        return (sum(apiserver_requests(self.dev).values()) - before) / (time.monotonic() - started)

    def run(self, timeline: Timeline, watch: Watch) -> dict[str, Any]:
        pid = self.controller.pid()
        names = self.job_names()
        idle_rate = self.idle_rate()
        load_before = load_average()
        cpu_before, requests_before = process_cpu_seconds(pid), apiserver_requests(self.dev)
        components_before = component_cpu_seconds(self.dev)
        client = self.dev.admin_client()
        path = self.controller.jobs_path(NAMESPACE)
        applied: dict[str, float] = {}

        def apply(name: str) -> None:
            applied[name] = time.monotonic()
            client.create(path, self.make_job(name), exist_ok=False)

        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(apply, names))
        apply_seconds = time.monotonic() - started

        def all_running() -> bool:
            if watch.failure is not None:
                raise watch.failure
            return all(
                sum(not math.isnan(pod.running) for pod in timeline.pods(name)) >= self.pods_per_job
                for name in names
            )

        try:
            wait_until(
                f"{self.jobs} {self.controller.kind}s Running", all_running, self.timeout, interval=0.2
            )
        except AssertionError:
            short = {
                name: [(pod.created, pod.bound, pod.running) for pod in timeline.pods(name)]
                for name in names
                if sum(not math.isnan(pod.running) for pod in timeline.pods(name)) < self.pods_per_job
            }
            print(f"not Running as the watch saw it ({len(short)} jobs): {dict(list(short.items())[:5])}; "
                  f"watch events {dict(timeline.events)}", file=sys.stderr)  # fmt: skip
            raise
        last_running = time.monotonic() - started
        time.sleep(SETTLE_SECONDS)
        requests_after, cpu_after = apiserver_requests(self.dev), process_cpu_seconds(pid)
        components_after = component_cpu_seconds(self.dev)
        window = time.monotonic() - started
        load_after = load_average()

        created, running, partial, early = [], [], [], 0
        for name in names:
            pods = sorted(timeline.pods(name), key=lambda pod: pod.created)[: self.pods_per_job]
            last_created = max(pod.created for pod in pods)
            created.append(last_created - applied[name])
            running.append(max(pod.running for pod in pods) - applied[name])
            partial.append(last_created - pods[0].created)
            early += any(pod.bound < last_created for pod in pods)
        delta = requests_after - requests_before
        total = sum(delta.values())
        net = total - idle_rate * window
        return {
            "jobs": self.jobs,
            "apply_all_s": rounded(apply_seconds),
            "created_s": {
                "p50": rounded(percentile(created, 0.5)),
                "p99": rounded(percentile(created, 0.99)),
            },
            "running_s": {
                "p50": rounded(percentile(running, 0.5)),
                "p99": rounded(percentile(running, 0.99)),
            },
            "first_apply_to_last_running_s": rounded(last_running),
            "api_requests_per_job": rounded(net / self.jobs, 2),
            "api_requests": {
                "total": round(total),
                "idle_rate_per_s": rounded(idle_rate, 2),
                "window_s": rounded(window, 1),
                "top": dict(delta.most_common(12)),
            },
            "cpu_s": rounded(cpu_after - cpu_before, 2),
            "cpu_s_by_component": {
                name: rounded(components_after[name] - components_before[name], 2)
                for name in components_after
                if name in components_before
            },
            "peak_rss_mib": rounded(peak_rss_bytes(pid) / 2**20, 1),
            "gang": {
                "partial_created_max_s": rounded(max(partial)),
                "partial_created_p99_s": rounded(percentile(partial, 0.99)),
                "jobs_with_a_pod_bound_before_the_last_existed": early,
            },
            "load": {"before": load_before, "after": load_after},
            "watch_resumed": watch.resumed,
        }

    def delete_all(self) -> None:
        """Deletes the round's jobs and waits until none of their pods is left."""
        kind = f"{self.controller.plural}.{self.controller.plural_path.split('/')[2]}"
        self.controller.cluster.kubectl("-n", NAMESPACE, "delete", kind, "--all", "--wait=false", timeout=300)
        client = self.dev.admin_client()

        def no_pods() -> bool:
            listing = client.get_json(f"/api/v1/pods?labelSelector={BENCH_LABEL}&limit=1")
            return not listing["items"]

        wait_until("every benchmark pod gone", no_pods, timeout=max(300.0, self.jobs * 1.0), interval=1.0)


def median_of(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of every number over the rounds, keeping the shape of one round."""

    def merge(values: list[Any]) -> Any:
        first = values[0]
        if isinstance(first, dict):
            return {key: merge([value[key] for value in values if key in value]) for key in first}
        if isinstance(first, (int, float)) and not isinstance(first, bool):
            return rounded(statistics.median(values))
        return first

    merged = merge(rounds)
    merged["api_requests"].pop("top", None)
    return dict(merged)


# -- the comparison ----------------------------------------------------------------------------------------


def compare(arguments: argparse.Namespace, dev: DevCluster, scratch: Path) -> dict[str, Any]:
    cluster = LocalCluster(dev)
    controllers = [CONTROLLERS[name](cluster, scratch) for name in arguments.controllers]
    rows: dict[str, dict[str, Any]] = {}
    available: list[JobController] = []
    for controller in controllers:
        reason = controller.unavailable()
        if reason:
            print(f"{controller.name}: not measured: {reason}", file=sys.stderr, flush=True)
            rows[controller.name] = {"skipped": reason}
            continue
        controller.install()
        available.append(controller)
        rows[controller.name] = {"kind": controller.kind, "rounds": []}
    for index in range(arguments.repeats):
        for controller in available:
            print(f"round {index + 1}/{arguments.repeats}: {controller.name}", file=sys.stderr, flush=True)
            controller.start()
            timeline = Timeline()
            one = Round(
                controller, dev, arguments.jobs, PODS_PER_JOB,
                lambda name, c=controller: c.job(name, NAMESPACE),  # type: ignore[misc]
                prefix=f"{controller.name[:2]}{index}", idle_seconds=arguments.idle_seconds,
            )  # fmt: skip
            try:
                with watching(dev, PODS_WATCH, timeline.on_pod) as watch:
                    result = one.run(timeline, watch)
                one.delete_all()
            except AssertionError:
                print(f"{controller.name} log (tail):\n{controller.log_tail(40)}", file=sys.stderr)
                raise
            finally:
                controller.stop()
            rows[controller.name]["rounds"].append(result)
            print(f"  {summary_line(result)}", file=sys.stderr, flush=True)
    for row in rows.values():
        if row.get("rounds"):
            row["median"] = median_of(row["rounds"])
    return rows


def summary_line(result: dict[str, Any]) -> str:
    return (
        f"Running p50 {result['running_s']['p50']:.1f} s p99 {result['running_s']['p99']:.1f} s, "
        f"{result['api_requests_per_job']:.1f} requests/job, cpu {result['cpu_s']:.1f} s, "
        f"load {result['load']['before']}-{result['load']['after']}"
    )


def format_comparison(result: dict[str, Any]) -> str:
    rows = result["rows"]
    lines = [
        f"job controllers side by side: {result['jobs']} jobs x {PODS_PER_JOB} pods x 1 GPU at once, "
        f"{result['nodes']} kwok nodes x 8 GPUs, median of {result['repeats']} rounds; "
        f"{result['machine']['cpus']} CPUs shared, {result['machine']['memory_gib']} GiB",
        "",
        f"{'':20}{'created p50/p99':>18}{'Running p50/p99':>18}{'last Running':>14}{'req/job':>9}"
        f"{'cpu s':>8}{'peak MiB':>10}{'partial max':>13}{'bound early':>13}{'load':>12}",
    ]
    for name, row in rows.items():
        if "skipped" in row:
            lines.append(f"{name:20}not measured: {row['skipped']}")
            continue
        m = row["median"]
        lines.append(
            f"{name:20}{m['created_s']['p50']:>8.2f}/{m['created_s']['p99']:<6.2f}s "
            f"{m['running_s']['p50']:>8.2f}/{m['running_s']['p99']:<6.2f}s "
            f"{m['first_apply_to_last_running_s']:>11.1f} s{m['api_requests_per_job']:>9.1f}"
            f"{m['cpu_s']:>8.1f}{m['peak_rss_mib']:>10.0f}{m['gang']['partial_created_max_s']:>11.2f} s"
            f"{m['gang']['jobs_with_a_pod_bound_before_the_last_existed']:>13.0f}"
            f"{m['load']['before']:>6.1f}-{m['load']['after']:<5.1f}"
        )
    measured = {name: row["median"] for name, row in rows.items() if "median" in row}
    lines.append("")
    for name, m in measured.items():
        lines.append(f"cpu s during the {name} rounds (median): {_components(m['cpu_s_by_component'])}")
    ours = measured.get(MaaSOperator.name)
    anchors = {name: m for name, m in measured.items() if name != MaaSOperator.name}
    if ours and anchors:
        best = min(anchors, key=lambda name: anchors[name]["running_s"]["p99"])
        lines += [
            "",
            f"ratios to the best anchor ({best}): Running p99 "
            f"{ours['running_s']['p99'] / anchors[best]['running_s']['p99']:.2f}x, API requests per job "
            f"{ours['api_requests_per_job'] / anchors[best]['api_requests_per_job']:.2f}x",
        ]
    lines += [
        "",
        "req/job: apiserver_request_total over the round (until all Running + 3 s), less the idle rate just "
        "before, per job; cpu s and peak MiB: the controller process; partial max: longest time a job had "
        "only part of its pods created; bound early: jobs with a pod bound to a node before their last pod "
        "existed; load: 1-minute load average before-after the round (median)",
    ]
    return "\n".join(lines)


def plot_comparison(result: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)
        return False
    measured = {name: row for name, row in result["rows"].items() if "median" in row}
    figure, (times, requests) = plt.subplots(1, 2, figsize=(11, 4))
    names = list(measured)
    width = 0.2
    for offset, (label, key, share) in enumerate(
        [("created p50", "created_s", "p50"), ("created p99", "created_s", "p99"),
         ("Running p50", "running_s", "p50"), ("Running p99", "running_s", "p99")]
    ):  # fmt: skip
        values = [measured[name]["median"][key][share] for name in names]
        positions = [index + (offset - 1.5) * width for index in range(len(names))]
        times.bar(positions, values, width, label=label)
        for rnd in range(len(measured[names[0]]["rounds"])):
            times.scatter(
                positions,
                [measured[name]["rounds"][rnd][key][share] for name in names if rnd < len(measured[name]["rounds"])],
                color="black", s=6, zorder=3,
            )  # fmt: skip
    times.set_xticks(range(len(names)), names)
    times.set_ylabel("seconds after the job's apply")
    times.set_title(f"{result['jobs']} jobs x {PODS_PER_JOB} pods applied at once (dots: rounds)")
    times.legend(fontsize=8)
    requests.bar(
        names, [measured[name]["median"]["api_requests_per_job"] for name in names], color="tab:gray"
    )
    requests.set_ylabel("API requests per job (all clients, net of idle)")
    requests.set_title(f"load {min(m['median']['load']['before'] for m in measured.values()):.0f}-"
                       f"{max(m['median']['load']['after'] for m in measured.values()):.0f} on "
                       f"{result['machine']['cpus']} shared CPUs")  # fmt: skip
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


# -- past the anchors: our operator alone, 1,000 nodes -----------------------------------------------------


class OperatorWatcher:
    """Our operator's metrics and process figures."""

    def __init__(self, controller: MaaSOperator) -> None:
        self.controller = controller

    def counters(self) -> dict[str, Any]:
        return operator_counters(self.controller.operator.metrics())


def scale_wave(
    controller: MaaSOperator, dev: DevCluster, count: int, stages: int, replicas: int, keep: bool
) -> dict[str, Any]:
    watcher = OperatorWatcher(controller)
    timeline = Timeline()
    before = watcher.counters()
    one = Round(
        controller, dev, count, stages * replicas,
        lambda name: maasjob(name, NAMESPACE, stages, replicas),
        prefix=f"scale{count}", idle_seconds=20.0, timeout=max(900.0, count * 2.0),
    )  # fmt: skip
    print(f"scale: {count} MaaSJobs x {stages * replicas} pods", file=sys.stderr, flush=True)
    with watching(dev, PODS_WATCH, timeline.on_pod) as watch:
        result = one.run(timeline, watch)
    after = watcher.counters()
    own = after["requests"] - before["requests"]
    window = result["api_requests"]["window_s"]
    result.update(
        {
            "operator_requests_per_job": rounded(sum(own.values()) / count, 2),
            "operator_requests": dict(own),
            "reconciles_per_job": rounded((after["reconciles"] - before["reconciles"]) / count, 2),
            "reconcile_p99_s_at_most": histogram_quantile(
                before["reconcile_buckets"], after["reconcile_buckets"], 0.99
            ),
            "api_request_rate_per_s": rounded(result["api_requests"]["total"] / window, 1),
            "operator_request_rate_per_s": rounded(sum(own.values()) / window, 1),
            "cpu_s_per_job": rounded(result["cpu_s"] / count, 4),
            "rss_mib_after": rounded(
                int(Path(f"/proc/{controller.pid()}/status").read_text().split("VmRSS:")[1].split()[0])
                / 1024,
                1,
            ),
        }
    )
    print(f"  {summary_line(result)}", file=sys.stderr, flush=True)
    if not keep:
        one.delete_all()
    return result


def steady_state(controller: MaaSOperator, dev: DevCluster, seconds: float) -> dict[str, Any]:
    """Every job Running, nothing changing: what the operator and the cluster still spend."""
    watcher = OperatorWatcher(controller)
    before, requests_before = watcher.counters(), sum(apiserver_requests(dev).values())
    cpu_before, started = process_cpu_seconds(controller.pid()), time.monotonic()
    time.sleep(seconds)
    after, requests_after = watcher.counters(), sum(apiserver_requests(dev).values())
    elapsed = time.monotonic() - started
    return {
        "seconds": rounded(elapsed, 1),
        "operator_requests": dict(after["requests"] - before["requests"]),
        "reconciles": after["reconciles"] - before["reconciles"],
        "operator_cpu_s": rounded(process_cpu_seconds(controller.pid()) - cpu_before, 2),
        "api_request_rate_per_s": rounded((requests_after - requests_before) / elapsed, 1),
        "load": load_average(),
    }


def restart(controller: MaaSOperator, dev: DevCluster, jobs: int) -> dict[str, Any]:
    """Restarts the operator with every job present: time to be in sync, and what it changed."""
    client = dev.admin_client()
    listing = client.get_json(f"/api/v1/pods?labelSelector={BENCH_LABEL}")
    uids_before = {pod["metadata"]["uid"] for pod in listing["items"]}
    version = listing["metadata"]["resourceVersion"]
    events: Counter[str] = Counter()

    def on_event(_: float, event: dict[str, Any]) -> None:
        if event["type"] in ("ADDED", "DELETED"):
            events[event["type"]] += 1

    print(f"scale: restarting the operator with {jobs} jobs present", file=sys.stderr, flush=True)
    with watching(dev, f"{PODS_WATCH}&resourceVersion={version}", on_event):
        controller.stop()
        load_before = load_average()
        started = time.monotonic()
        controller.start()
        process_started = time.monotonic() - started
        watcher = OperatorWatcher(controller)

        def in_sync() -> dict[str, Any] | None:
            figures = watcher.counters()
            return figures if figures.get("reconciles", 0) >= jobs and figures.get("queue", 1) == 0 else None

        wait_until("the restarted operator in sync", in_sync, timeout=900, interval=0.5)
        sync_seconds = time.monotonic() - started
        time.sleep(10.0)  # anything the restart would still do shows up here
        figures = watcher.counters()
    uids_after = {
        pod["metadata"]["uid"]
        for pod in client.get_json(f"/api/v1/pods?labelSelector={BENCH_LABEL}")["items"]
    }
    writes = {key: value for key, value in figures["requests"].items() if not key.startswith("GET")}
    return {
        "jobs": jobs,
        "seconds_to_liveness": rounded(process_started, 2),
        "seconds_to_in_sync": rounded(sync_seconds, 2),
        "reconciles": figures["reconciles"],
        "pods_created": events["ADDED"],
        "pods_deleted": events["DELETED"],
        "pod_uids_unchanged": uids_before == uids_after,
        "operator_writes": writes,
        "operator_reads": {key: value for key, value in figures["requests"].items() if key.startswith("GET")},
        "peak_rss_mib": rounded(peak_rss_bytes(controller.pid()) / 2**20, 1),
        "load": {"before": load_before, "after": load_average()},
    }


def planning_table(node_counts: list[int], repeats: int = 20) -> list[dict[str, Any]]:
    """Decision time in-process: a new 8-worker job planned, and a running one looked at again, on clusters of
    `node_counts` nodes whose first half is full of other pods (what the operator's cache holds there)."""
    from datetime import timedelta

    from maas_devcluster.topology import build_node_manifests
    from maas_operator.cache import WorldCache
    from maas_operator.reconcile import reconcile
    from maas_operator.settings import OperatorSettings

    settings = OperatorSettings()
    rows = []
    now = datetime.now(UTC)
    for count in node_counts:
        cache = WorldCache()
        nodes = build_node_manifests(load_cluster_description().with_node_count(count))
        for node in nodes:
            cache.put_node(None, node)
        for index, node in enumerate(nodes[: count // 2]):
            for gpu in range(8):
                cache.put_pod(None, {
                    "metadata": {"name": f"other-{index}-{gpu}", "namespace": "others", "uid": f"u{index}-{gpu}"},
                    "spec": {"nodeName": node["metadata"]["name"],
                             "containers": [{"name": "c", "resources": {"limits": {"nvidia.com/gpu": "1"}}}]},
                    "status": {"phase": "Running"},
                })  # fmt: skip
        planning, steady = [], []
        for attempt in range(repeats):
            name = f"job-{attempt}"
            manifest = maasjob(name, NAMESPACE, 2, 4)
            manifest["metadata"].update(
                {"uid": f"job-uid-{attempt}", "generation": 1, "resourceVersion": "1"}
            )
            key = cache.put_job(None, manifest)
            began = time.perf_counter()
            observed = cache.observe(key, now)
            assert observed is not None
            decision = reconcile(observed, settings)
            planning.append(time.perf_counter() - began)
            assert decision.planned, decision.status
            # Carry it out as the cluster would: the plan stored, the pods bound and Running.
            for manifest_out in decision.apply:
                body = json.loads(json.dumps(manifest_out))
                body["metadata"]["resourceVersion"] = "2"
                if body["kind"] == "ConfigMap":
                    cache.put_configmap(None, body)
                elif body["kind"] == "Pod" and not body["spec"].get("schedulingGates"):
                    body["metadata"]["uid"] = f"{name}-{body['metadata']['name']}"
                    body["metadata"]["creationTimestamp"] = now.strftime("%Y-%m-%dT%H:%M:%SZ")
                    body["status"] = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
                    cache.put_pod(None, body)
            job = cache.jobs[key]
            job["status"] = decision.status.to_wire()
            for _ in range(2):
                began = time.perf_counter()
                observed = cache.observe(key, now + timedelta(seconds=1))
                assert observed is not None
                decision = reconcile(observed, settings)
                job["status"] = decision.status.to_wire()
            steady.append(time.perf_counter() - began)
            assert not decision.planned and not decision.apply, "a running job should need nothing"
        rows.append(
            {
                "nodes": count,
                "pods_in_cache": len(cache.holders),
                "planning_ms": {
                    "p50": rounded(percentile(planning, 0.5) * 1000),
                    "p99": rounded(percentile(planning, 0.99) * 1000),
                },
                "steady_decision_ms": {
                    "p50": rounded(percentile(steady, 0.5) * 1000),
                    "p99": rounded(percentile(steady, 0.99) * 1000),
                },
            }
        )
        print(f"planning with {count} nodes: {rows[-1]}", file=sys.stderr, flush=True)
    return rows


def scale(arguments: argparse.Namespace, dev: DevCluster, scratch: Path) -> dict[str, Any]:
    controller = MaaSOperator(LocalCluster(dev), scratch)
    controller.install()
    controller.start()
    waves = []
    try:
        for count in arguments.scale_waves:
            keep = count == arguments.scale_waves[-1]
            waves.append(scale_wave(controller, dev, count, 2, 4, keep))
        steady = steady_state(controller, dev, 30.0)
        restarted = restart(controller, dev, arguments.scale_waves[-1])
    except AssertionError:
        print(f"operator log (tail):\n{controller.log_tail(40)}", file=sys.stderr)
        raise
    finally:
        controller.stop()
    return {"waves": waves, "steady": steady, "restart": restarted}


def _components(cpu: dict[str, float]) -> str:
    """CPU seconds by component, largest first."""
    return ", ".join(f"{name} {seconds:.1f}" for name, seconds in sorted(cpu.items(), key=lambda kv: -kv[1]))


def format_scale(result: dict[str, Any]) -> str:
    scale_result = result["scale"]
    lines = [
        f"our operator past the anchors: {result['nodes']} kwok nodes x 8 GPUs, MaaSJobs of 8 pods "
        f"(2 stages x 4 replicas) applied at once in waves; {result['machine']['cpus']} CPUs shared, "
        f"{result['machine']['memory_gib']} GiB",
        "",
        f"{'jobs':>6}{'Running p50/p99':>20}{'last Running':>14}{'reconcile p99':>15}{'req/s all':>11}"
        f"{'req/s ours':>12}{'RSS MiB':>9}{'load':>12}",
    ]
    for wave in scale_result["waves"]:
        lines.append(
            f"{wave['jobs']:>6}{wave['running_s']['p50']:>11.1f}/{wave['running_s']['p99']:<6.1f}s "
            f"{wave['first_apply_to_last_running_s']:>11.1f} s"
            f"{'<= ' + str(wave['reconcile_p99_s_at_most']) + ' s':>15}"
            f"{wave['api_request_rate_per_s']:>11.0f}{wave['operator_request_rate_per_s']:>12.1f}"
            f"{wave['rss_mib_after']:>9.0f}{wave['load']['before']:>6.1f}-{wave['load']['after']:<5.1f}"
        )
    for wave in scale_result["waves"]:
        lines.append(f"  cpu s during the {wave['jobs']}-job wave: {_components(wave['cpu_s_by_component'])}")
    steady = scale_result["steady"]
    lines += [
        "",
        f"steady ({steady['seconds']:.0f} s, every job Running): operator requests "
        f"{sum(steady['operator_requests'].values()):.0f}, reconciles {steady['reconciles']:.0f}, operator cpu "
        f"{steady['operator_cpu_s']:.1f} s, all clients {steady['api_request_rate_per_s']:.0f} requests/s "
        f"(load {steady['load']})",
    ]
    again = scale_result["restart"]
    lines += [
        f"restart with {again['jobs']} jobs present: live after {again['seconds_to_liveness']:.1f} s, in sync "
        f"(every job reconciled, queue empty) after {again['seconds_to_in_sync']:.1f} s; pods created "
        f"{again['pods_created']}, deleted {again['pods_deleted']}, pod UIDs unchanged: "
        f"{again['pod_uids_unchanged']}; operator writes {again['operator_writes'] or 'none'}; peak "
        f"{again['peak_rss_mib']:.0f} MiB (load {again['load']['before']}-{again['load']['after']})",
        "",
        "cost: per job as the jobs grow (same cluster), and per decision as the cluster grows (in-process, half",
        "the nodes full of other pods)",
        f"{'':28}{'req/job all':>12}{'req/job ours':>13}{'reconciles/job':>15}{'cpu ms/job':>11}"
        f"{'new job planned p50/p99':>25}{'running job looked at p50/p99':>31}",
    ]
    for wave in scale_result["waves"]:
        lines.append(
            f"{str(wave['jobs']) + ' jobs, ' + str(result['nodes']) + ' nodes':28}"
            f"{wave['api_requests_per_job']:>12.1f}{wave['operator_requests_per_job']:>13.1f}"
            f"{wave['reconciles_per_job']:>15.2f}{wave['cpu_s_per_job'] * 1000:>11.1f}{'':25}{'':31}"
        )
    for row in result["planning"]:
        planning = f"{row['planning_ms']['p50']:.2f}/{row['planning_ms']['p99']:.2f} ms"
        steady_ms = f"{row['steady_decision_ms']['p50']:.2f}/{row['steady_decision_ms']['p99']:.2f} ms"
        lines.append(
            f"{'1 job, ' + str(row['nodes']) + ' nodes, ' + str(row['pods_in_cache']) + ' pods':28}"
            f"{'':12}{'':13}{'':15}{'':11}{planning:>25}{steady_ms:>31}"
        )
    return "\n".join(lines)


def plot_scale(result: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)
        return False
    waves = result["scale"]["waves"]
    figure, (cost, times, planning) = plt.subplots(1, 3, figsize=(15, 4))
    jobs = [wave["jobs"] for wave in waves]
    cost.plot(jobs, [w["api_requests_per_job"] for w in waves], "o-", label="API requests/job (all clients)")
    cost.plot(jobs, [w["operator_requests_per_job"] for w in waves], "o-", label="operator requests/job")
    cost.plot(jobs, [w["cpu_s_per_job"] * 1000 for w in waves], "o-", label="operator CPU ms/job")
    cost.set_xscale("log")
    cost.set_xlabel("jobs applied at once")
    cost.set_title(f"per-job cost, {result['nodes']} nodes")
    cost.legend(fontsize=8)
    times.plot(jobs, [w["running_s"]["p50"] for w in waves], "o-", label="apply -> Running p50")
    times.plot(jobs, [w["running_s"]["p99"] for w in waves], "o-", label="apply -> Running p99")
    times.plot(
        jobs, [w["first_apply_to_last_running_s"] for w in waves], "o-", label="first apply -> last Running"
    )
    times.set_xscale("log")
    times.set_yscale("log")
    times.set_xlabel("jobs applied at once")
    times.set_ylabel("seconds")
    loads = [w["load"]["after"] for w in waves]
    times.set_title(f"load {min(loads):.0f}-{max(loads):.0f} on {result['machine']['cpus']} shared CPUs")
    times.legend(fontsize=8)
    rows = result["planning"]
    nodes = [row["nodes"] for row in rows]
    planning.plot(nodes, [row["planning_ms"]["p50"] for row in rows], "o-", label="new job planned p50")
    planning.plot(nodes, [row["steady_decision_ms"]["p50"] for row in rows], "o-", label="running job p50")
    planning.set_xscale("log")
    planning.set_xlabel("nodes (half full of other pods)")
    planning.set_ylabel("ms per decision (in-process)")
    planning.set_title("decision time vs cluster size")
    planning.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


# -- main --------------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(memory / 2**30),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def git_commit() -> str:
    answer = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return answer.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--controllers", nargs="+", choices=list(CONTROLLERS), default=list(CONTROLLERS))
    parser.add_argument("--jobs", type=int, default=100, help="jobs applied at once per round")
    parser.add_argument(
        "--repeats", type=int, default=3, help="rounds per controller (the median is reported)"
    )
    parser.add_argument(
        "--idle-seconds",
        type=float,
        default=20.0,
        help="idle baseline before each round (2 node-lease periods)",
    )
    parser.add_argument("--spare-nodes", type=int, default=2, help="nodes beyond what the jobs fill")
    parser.add_argument("--scale", action="store_true", help="our operator past the anchors (see above)")
    parser.add_argument("--nodes", type=int, default=1000, help="kwok nodes of --scale")
    parser.add_argument("--scale-waves", type=int, nargs="+", default=[10, 100, 1000], help="jobs per wave")
    parser.add_argument("--planning-nodes", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--output", type=Path, help="results file (.json; .txt and .png beside it)")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--note", default="", help="a line saved with the results")
    arguments = parser.parse_args(argv)
    # SIGTERM unwinds like an exception, so the cluster and the controller processes are stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    gpus_per_node = load_cluster_description().pools[0].gpus_per_node
    if arguments.scale:
        nodes = arguments.nodes
        needed = math.ceil(max(arguments.scale_waves) * 8 / gpus_per_node)
        if needed > nodes:
            parser.error(
                f"--nodes {nodes} hold {nodes * gpus_per_node} GPUs; the last wave needs {needed} nodes"
            )
        output = arguments.output or RESULTS / f"operator_scale_{max(arguments.scale_waves)}.json"
    else:
        nodes = math.ceil(arguments.jobs * PODS_PER_JOB / gpus_per_node) + arguments.spare_nodes
        output = arguments.output or RESULTS / "operator_scale.json"
    result: dict[str, Any] = {
        "measured_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": git_commit(),
        "machine": machine(),
        "note": arguments.note,
        "nodes": nodes,
    }
    with tempfile.TemporaryDirectory(prefix="maas-bench-scale-") as folder:
        scratch = Path(folder)
        state_dir = scratch / "cluster"
        print(f"starting a local cluster of {nodes} nodes in {state_dir}", file=sys.stderr, flush=True)
        dev = up(state_dir, load_cluster_description().with_node_count(nodes), timeout_seconds=1200)
        result["cluster_start_s"] = dev.state.startup_seconds
        try:
            LocalCluster(dev).kubectl("create", "namespace", NAMESPACE)
            if arguments.scale:
                result["scale"] = scale(arguments, dev, scratch)
            else:
                result.update(
                    {
                        "jobs": arguments.jobs,
                        "repeats": arguments.repeats,
                        "rows": compare(arguments, dev, scratch),
                    }
                )
        finally:
            down(state_dir)
    if arguments.scale:
        result["planning"] = planning_table(arguments.planning_nodes)
        report = format_scale(result)
    else:
        report = format_comparison(result)
    if arguments.note:
        report = f"{report}\nnote: {arguments.note}"
    report = f"{report}\nmeasured {result['measured_at']} at {result['commit']}"
    print(report)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    output.with_suffix(".txt").write_text(report + "\n")
    if not arguments.no_plot:
        plot = plot_scale if arguments.scale else plot_comparison
        plot(result, output.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
