"""Test helpers for the operator on the real local cluster: the operator as a real process, our own fake
nodes per test, MaaSJobs as dicts, and waiting for a job's state."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml
from maas_devcluster.testing import LocalCluster, wait_until
from maas_devcluster.topology import ClusterDescription, NodePool, build_node_manifests

from tests.runtime.support import free_port

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "examples"
TEST_POOL_LABEL = "test.maas.dev/pool"
"""Label of a test's own fake nodes; jobs that should land there select it."""


class OperatorProcess:
    """`python -m maas_operator` against the local cluster, as a real process (start, kill, restart)."""

    def __init__(
        self,
        cluster: LocalCluster,
        log_dir: Path,
        resync_seconds: float = 30.0,
        kubeconfig: Path | None = None,
        environment: Mapping[str, str] | None = None,
    ) -> None:
        """`kubeconfig`: whose credentials it runs with (default: the admin's); `environment`: MAAS_* settings
        (the metrics and liveness ports are always free ports of this machine)."""
        self.cluster = cluster
        self.log_dir = log_dir
        self.resync_seconds = resync_seconds
        self.kubeconfig = kubeconfig or cluster.kubeconfig
        self.environment = dict(environment or {})
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.metrics_port = 0
        self.liveness_port = 0

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"operator-{self.starts}.log"

    def start(self, timeout: float = 60.0) -> None:
        self.starts += 1
        self.metrics_port, self.liveness_port = free_port(), free_port()
        env = {
            **os.environ,
            "MAAS_RESYNC_SECONDS": str(self.resync_seconds),
            **self.environment,
            "KUBECONFIG": str(self.kubeconfig),
            "MAAS_METRICS_PORT": str(self.metrics_port),
            "PYTHONUNBUFFERED": "1",
        }
        env.pop("KUBERNETES_SERVICE_HOST", None)
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "maas_operator",
                "--liveness",
                f"http://127.0.0.1:{self.liveness_port}/healthz",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        wait_until("the operator's liveness endpoint", self.alive, timeout=timeout)

    def alive(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            raise AssertionError(f"the operator exited; log:\n{self.log_path.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=2
            ) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    def kill(self, signum: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signum)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as answer:
            return str(answer.read().decode())

    def log_text(self) -> str:
        return self.log_path.read_text()


def install_crd(cluster: LocalCluster) -> None:
    """Applies the MaaSJob CRD and waits until it is Established."""
    cluster.kubectl("apply", "-f", str(REPO / "crds" / "maasjob.yaml"))

    # Not `kubectl wait`: it fails outright while the new CRD has no status.conditions yet.
    def established() -> bool:
        crd = json.loads(cluster.kubectl("get", "crd/maasjobs.maas.dev", "-o", "json").stdout)
        conditions = (crd.get("status") or {}).get("conditions") or []
        return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)

    wait_until("the MaaSJob CRD Established", established)


def load_example(name: str) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((EXAMPLES / name).read_text())
    return document


def train_job(name: str, pool: str | None = None, **spec: Any) -> dict[str, Any]:
    """A small LargeModel Train job (3 stages x `replicas`), on the test's node pool when given."""
    body: dict[str, Any] = {
        "mode": "Train",
        "model": {"catalog": "LargeModel"},
        "split": {"stages": 3},
        "parallelism": {"replicas": 1, "microbatches": 4},
        "resources": {"gpus": 1},
        "failurePolicy": {"backoff": {"initialSeconds": 0, "maxSeconds": 0}},
    }
    for key, value in spec.items():
        body[key] = (
            {**body[key], **value} if isinstance(value, dict) and isinstance(body.get(key), dict) else value
        )
    if pool is not None:
        body.setdefault("placement", {}).setdefault("nodeSelector", {})[TEST_POOL_LABEL] = pool
    return {"apiVersion": "maas.dev/v1alpha1", "kind": "MaaSJob", "metadata": {"name": name}, "spec": body}


class Jobs:
    """kubectl-level verbs on MaaSJobs and their pods in one namespace."""

    def __init__(self, cluster: LocalCluster, namespace: str) -> None:
        self.cluster = cluster
        self.namespace = namespace

    def kubectl(
        self, *arguments: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self.cluster.kubectl("-n", self.namespace, *arguments, stdin=stdin, check=check)

    def apply(self, manifest: dict[str, Any]) -> None:
        self.kubectl("apply", "-f", "-", stdin=json.dumps(manifest))

    def get(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.kubectl("get", "maasjob", name, "-o", "json").stdout)
        return result

    def status(self, name: str) -> dict[str, Any]:
        return dict(self.get(name).get("status") or {})

    def condition(self, name: str, type_: str) -> dict[str, Any] | None:
        return next((c for c in self.status(name).get("conditions", []) if c["type"] == type_), None)

    def wait_phase(self, name: str, phase: str, timeout: float = 60.0) -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            status = self.status(name)
            return status if status.get("phase") == phase else None

        return wait_until(f"{self.namespace}/{name} phase {phase}", probe, timeout=timeout)

    def wait(self, what: str, probe: Callable[[], Any], timeout: float = 60.0) -> Any:
        return wait_until(what, probe, timeout=timeout)

    def pods(self, job: str) -> list[dict[str, Any]]:
        result = self.kubectl("get", "pods", "-l", f"maas.dev/job={job}", "-o", "json")
        items: list[dict[str, Any]] = json.loads(result.stdout)["items"]
        return items

    def events(self, job: str) -> list[dict[str, Any]]:
        result = self.kubectl(
            "get",
            "events",
            "--field-selector",
            f"involvedObject.name={job},involvedObject.kind=MaaSJob",
            "-o",
            "json",
        )
        items: list[dict[str, Any]] = json.loads(result.stdout)["items"]
        return items


def pool_node_manifests(pool: str, count: int, gpus_per_node: int = 8) -> list[dict[str, Any]]:
    """Fake nodes of a test's own, labelled with its pool (kwok makes them Ready)."""
    description = ClusterDescription(
        name=pool,
        pools=(
            NodePool(
                name_prefix=f"{pool}-n",
                count=count,
                gpus_per_node=gpus_per_node,
                labels={TEST_POOL_LABEL: pool},
            ),
        ),
    )
    return build_node_manifests(description)


def wait_nodes_ready(cluster: LocalCluster, names: list[str], timeout: float = 30.0) -> None:
    def ready() -> bool:
        result = cluster.kubectl("get", "nodes", *names, "-o", "json")
        answer = json.loads(result.stdout)
        # kubectl answers one name with the object itself, several with a List.
        nodes = answer.get("items", [answer])
        return len(nodes) == len(names) and all(
            any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"].get("conditions", []))
            for node in nodes
        )

    wait_until(f"nodes {', '.join(names)} Ready", ready, timeout=timeout)


def seconds_since(start: float) -> float:
    return time.monotonic() - start


def bound_claim(namespace: str, claim: str, host_path: str | None = None) -> list[dict[str, Any]]:
    """A PersistentVolume pre-bound to a claim, and the claim: the scheduler refuses pods whose claims are
    unbound. kwok mounts nothing, so any folder will do there; the real node mounts `host_path`."""
    volume_name = f"{namespace}-{claim}"
    access = ["ReadWriteMany"]
    return [
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": volume_name},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": access,
                "persistentVolumeReclaimPolicy": "Delete",
                "storageClassName": "",
                "hostPath": {"path": host_path or f"/tmp/{volume_name}"},
                "claimRef": {"namespace": namespace, "name": claim},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim, "namespace": namespace},
            "spec": {
                "accessModes": access,
                "storageClassName": "",
                "volumeName": volume_name,
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    ]
