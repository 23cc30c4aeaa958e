"""An in-memory cluster for the operator's pure decisions: it carries out a Decision the way the API server,
the scheduler and kwok would (pods appear gated, ungated pods run on their pinned node, deletes remove), so
tests can run `reconcile` step by step without any server."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from maas_api.job import parse_maasjob
from maas_api.plan import Plan
from maas_api.spec import MaaSJobSpec
from maas_api.status import MaaSJobStatus
from maas_devcluster.simulation import CONTAINERS_READY_ANNOTATION
from maas_operator import names
from maas_operator.children import JobRef
from maas_operator.planner import Node
from maas_operator.reconcile import Decision, Observed, reconcile
from maas_operator.settings import OperatorSettings
from maas_operator.world import WORKER_CONTAINER, WorkerPod, worker_pod

START = datetime(2026, 1, 1, tzinfo=UTC)
SETTINGS = OperatorSettings()


def spec_of(manifest: dict[str, Any]) -> MaaSJobSpec:
    return parse_maasjob(manifest).spec


def gpu_nodes(count: int = 2, gpus: int = 8, prefix: str = "n") -> list[Node]:
    return [Node(name=f"{prefix}{i}", gpus=gpus) for i in range(count)]


def train_manifest(replicas: int = 1, stages: int = 3, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "mode": "Train",
        "model": {"catalog": "LargeModel"},
        "split": {"stages": stages},
        "parallelism": {"replicas": replicas, "microbatches": 4},
        "resources": {"gpus": 1},
        "failurePolicy": {"maxRestarts": 2, "backoff": {"initialSeconds": 10, "maxSeconds": 60}},
    }
    body.update(spec)
    return {"apiVersion": "maas.dev/v1alpha1", "kind": "MaaSJob", "metadata": {"name": "job"}, "spec": body}


def serve_manifest(replicas: int = 2, **spec: Any) -> dict[str, Any]:
    manifest: dict[str, Any] = {
        "apiVersion": "maas.dev/v1alpha1",
        "kind": "MaaSJob",
        "metadata": {"name": "svc"},
        "spec": {
            "mode": "Serve",
            "model": {"catalog": "Transformer", "args": {"vocab": 512, "dim": 64, "layers": 4, "heads": 4}},
            "split": {"stages": 2},
            "parallelism": {"replicas": replicas, "schedule": "GPipe"},
            "serving": {},
            "resources": {"gpus": 1},
        },
    }
    manifest["spec"].update(spec)
    return manifest


@dataclass
class FakeWorld:
    """One job and the cluster around it."""

    manifest: dict[str, Any]
    nodes: list[Node] = field(default_factory=gpu_nodes)
    now: datetime = START
    generation: int = 1
    status: MaaSJobStatus = field(default_factory=MaaSJobStatus)
    pods: dict[str, dict[str, Any]] = field(default_factory=dict)
    plan_configmap: dict[str, Any] | None = None
    replica_configmaps: set[str] = field(default_factory=set)
    used_gpus: dict[str, int] = field(default_factory=dict)
    deleted_job: bool = False
    applied: list[dict[str, Any]] = field(default_factory=list)
    """Every manifest applied so far, in order."""

    @property
    def job(self) -> JobRef:
        return JobRef(name=self.manifest["metadata"]["name"], namespace="ns", uid="uid-1")

    def observe(self) -> Observed:
        spec = spec_of(self.manifest)
        plan = None
        inputs = None
        surge = 0
        if self.plan_configmap is not None:
            plan = Plan.model_validate_json(self.plan_configmap["data"][names.PLAN_KEY])
            annotations = self.plan_configmap["metadata"]["annotations"]
            inputs = annotations[names.PLAN_INPUTS_ANNOTATION]
            surge = int(annotations.get(names.SURGE_ANNOTATION, "0"))
        return Observed(
            job=self.job,
            generation=self.generation,
            spec=spec,
            status=self.status,
            plan=plan,
            plan_inputs=inputs,
            pods=tuple(worker_pod(pod) for pod in self.pods.values()),
            nodes=tuple(self.nodes),
            used_gpus=dict(self.used_gpus),
            now=self.now,
            replica_configmaps=frozenset(self.replica_configmaps),
            plan_surge=surge,
        )

    def decide(self, settings: OperatorSettings = SETTINGS) -> Decision:
        return reconcile(self.observe(), settings)

    def step(self, settings: OperatorSettings = SETTINGS) -> Decision:
        """Decide and carry the decision out (pods that are deleted go at once unless `linger` is set)."""
        decision = self.decide(settings)
        self.carry_out(decision)
        return decision

    def carry_out(self, decision: Decision, linger: bool = False) -> None:
        self.status = decision.status
        for manifest in decision.apply:
            self.applied.append(manifest)
            if manifest["kind"] == "Pod":
                self._apply_pod(manifest)
            elif manifest["kind"] == "ConfigMap":
                if manifest["metadata"]["name"] == names.plan_configmap_name(self.job.name):
                    self.plan_configmap = copy.deepcopy(manifest)
                else:
                    self.replica_configmaps.add(manifest["metadata"]["name"])
        for change in decision.pod_conditions:
            self.set_condition(change.pod, change.type, change.status, change.reason)
        for deletion in decision.delete_pods:
            if linger:
                self.pods[deletion.name]["metadata"]["deletionTimestamp"] = self.now.isoformat()
            else:
                self.pods.pop(deletion.name, None)
        for name in decision.delete_configmaps:
            self.replica_configmaps.discard(name)
        self.deleted_job = self.deleted_job or decision.delete_job

    def _apply_pod(self, manifest: dict[str, Any]) -> None:
        name = manifest["metadata"]["name"]
        existing = self.pods.get(name)
        pod = copy.deepcopy(manifest)
        if existing is not None:
            # Same gang: an update may only lift the gate; everything else stays as it was.
            assert (
                existing["metadata"]["labels"][names.GANG_LABEL]
                == pod["metadata"]["labels"][names.GANG_LABEL]
            )
            if existing["spec"].get("schedulingGates") and not pod["spec"].get("schedulingGates"):
                existing["spec"].pop("schedulingGates")
            pod = existing
        else:
            pod["metadata"]["creationTimestamp"] = self.now.isoformat()
            pod["status"] = {"phase": "Pending"}
        if not pod["spec"].get("schedulingGates") and pod["status"]["phase"] == "Pending":
            node = pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
                "nodeSelectorTerms"
            ][0]["matchFields"][0]["values"][0]
            pod["spec"]["nodeName"] = node
            self.run(name)
        self.pods[name] = pod

    def run(self, name: str) -> None:
        pod = self.pods.get(name)
        if pod is None:
            return
        # As kwok's Stages do: a pod annotated containers-ready "false" runs, but its worker never gets ready.
        up = (pod["metadata"].get("annotations") or {}).get(CONTAINERS_READY_ANNOTATION) != "false"
        status = "True" if up else "False"
        pod["status"] = {"phase": "Running", "conditions": [{"type": "ContainersReady", "status": status}]}
        self._kubelet_ready(pod)

    def set_condition(self, name: str, type_: str, value: bool, reason: str = "") -> None:
        """A pod condition set through the status subresource (the operator's gate, or a test's stage down),
        with Ready recomputed as the kubelet does: containers ready and every readiness gate True."""
        pod = self.pods.get(name)
        if pod is None:
            return
        conditions = pod["status"].setdefault("conditions", [])
        status = "True" if value else "False"
        existing = next((c for c in conditions if c["type"] == type_), None)
        if existing is None:
            existing = {"type": type_}
            conditions.append(existing)
        if existing.get("status") != status:
            existing["lastTransitionTime"] = self.now.isoformat()
        existing.update(status=status, reason=reason)
        self._kubelet_ready(pod)

    @staticmethod
    def _kubelet_ready(pod: dict[str, Any]) -> None:
        conditions = pod["status"].setdefault("conditions", [])
        true = {c["type"] for c in conditions if c.get("status") == "True"}
        gates = [g["conditionType"] for g in pod["spec"].get("readinessGates", [])]
        ready = "ContainersReady" in true and all(gate in true for gate in gates)
        conditions[:] = [c for c in conditions if c["type"] != "Ready"]
        conditions.append({"type": "Ready", "status": "True" if ready else "False"})

    def exit(self, name: str, code: int) -> None:
        """The worker exits with `code` (as kwok's simulated fate does)."""
        self.pods[name]["status"] = {
            "phase": "Succeeded" if code == 0 else "Failed",
            "containerStatuses": [
                {"name": WORKER_CONTAINER, "state": {"terminated": {"exitCode": code, "reason": "Error"}}}
            ],
        }

    def views(self) -> list[WorkerPod]:
        return [worker_pod(pod) for pod in self.pods.values()]

    def later(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    def edit(self, **spec: Any) -> None:
        """A spec edit: new generation."""
        self.manifest = copy.deepcopy(self.manifest)
        self.manifest["spec"].update(spec)
        self.generation += 1

    def condition(self, type_: str) -> tuple[str, str]:
        found = next(c for c in self.status.conditions if c.type == type_)
        return found.status, found.reason

    def gang_labels(self) -> set[str]:
        return {pod["metadata"]["labels"][names.GANG_LABEL] for pod in self.pods.values()}

    def settle(self, steps: int = 5) -> None:
        """Reconciles until nothing is left to do (pods gone or created)."""
        for _ in range(steps):
            decision = self.step()
            if not decision.apply and not decision.delete_pods and not decision.pod_conditions:
                return
