"""Desired child objects of a MaaSJob: plan ConfigMaps, the headless Service and the worker pods.

Pure: (job, plan, gang state, settings) in, manifests (dicts for server-side apply) out. This is the only
module that knows the start-up contract's environment (`maas_api.contract`) and how a worker pod looks.

Gangs: a Train job is one torch.distributed world, so all its workers form one gang. A Serve replica is a
world of its own (its workers read a one-replica plan), so each replica is a gang: scaling or healing one
replica never touches the others. Every pod carries its gang's hash; a pod with another hash is stale.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from maas_api.contract import (
    DEFAULT_PROGRESS_PORT,
    PLAN_PATH,
    RENDEZVOUS_PORT,
    TERMINATION_MESSAGE_ENV,
    TERMINATION_MESSAGE_PATH,
    WORKER_INDEX_ENV,
    processes_per_worker,
)
from maas_api.job import API_VERSION, KIND
from maas_api.plan import Plan, WorkerPlan
from maas_api.spec import MaaSJobSpec, Mode, ServingSpec

from maas_operator import names
from maas_operator.pod_patch import merge_pod_patch
from maas_operator.settings import OperatorSettings
from maas_operator.world import GANG_SIZE_ENV, WORKER_CONTAINER

Manifest = dict[str, Any]

RENDEZVOUS_ID_ENV = "PET_RDZV_ID"
PLAN_VOLUME = "plan"
SHM_VOLUME = "dshm"
DATA_VOLUME = "data"
CHECKPOINT_VOLUME = "checkpoints"
WORKER_COMMAND = ("python", "-m", "maas_runtime.agent")
"""Every worker's command: the runtime's torchrun agent (also the runtime image's ENTRYPOINT)."""
RUN_AS_USER = 65532
"""The runtime image's non-root user (Dockerfile `USER 65532:65532`)."""


@dataclass(frozen=True)
class JobRef:
    """The identity of the owning MaaSJob, for names and owner references."""

    name: str
    namespace: str
    uid: str

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Gang:
    """Workers that must start together: one torch.distributed world."""

    key: str
    """'all' for a Train job, 'r<replica>' for a Serve replica."""
    workers: tuple[WorkerPlan, ...]
    plan: Plan
    """The plan these workers read (a one-replica plan for a Serve replica)."""
    configmap: str
    """Name of the ConfigMap holding `plan`."""


def owner_reference(job: JobRef) -> Manifest:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": job.name,
        "uid": job.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(job: JobRef, name: str, component: str, labels: Mapping[str, str] | None = None) -> Manifest:
    return {
        "name": name,
        "namespace": job.namespace,
        "labels": {
            names.JOB_LABEL: job.name,
            names.COMPONENT_LABEL: component,
            names.MANAGED_BY_LABEL: names.FIELD_MANAGER,
            **(labels or {}),
        },
        "ownerReferences": [owner_reference(job)],
    }


def plan_json(plan: Plan) -> str:
    """The plan document as workers read it (the same JSON `maas plan -o json` prints)."""
    return plan.model_dump_json(by_alias=True, exclude_none=True)


def plan_configmap(job: JobRef, plan: Plan, plan_inputs: str, surge: int = 0) -> Manifest:
    """The job's whole plan; `plan_inputs` is the hash of the spec it was made from (see reconcile), `surge`
    how many of its replicas are a rollout's extra ones (Serve)."""
    metadata = _metadata(job, names.plan_configmap_name(job.name), "plan")
    metadata["annotations"] = {names.PLAN_INPUTS_ANNOTATION: plan_inputs, names.SURGE_ANNOTATION: str(surge)}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata,
        "data": {names.PLAN_KEY: plan_json(plan)},
    }


def replica_plan(plan: Plan, replica: int) -> Plan:
    """Serve: the plan of one replica as a world of its own (replicas 1, workers renumbered 0..p-1)."""
    workers = [
        w.model_copy(update={"index": w.pipeline_rank, "replica": 0})
        for w in plan.workers
        if w.replica == replica
    ]
    # No notes: they describe the whole plan's making, and would change the replica's hash on every re-plan.
    # Nor the operator's own serving settings (rollout, drain): workers do not read them, and changing them
    # must not roll the replicas.
    serving = plan.serving
    if serving is not None:
        defaults = ServingSpec()
        serving = serving.model_copy(
            update={"rollout": defaults.rollout, "drain_seconds": defaults.drain_seconds}
        )
    return plan.model_copy(update={"replicas": 1, "workers": workers, "notes": [], "serving": serving})


def gangs(job: JobRef, plan: Plan) -> list[Gang]:
    """The plan's gangs: the whole job (Train), or one per replica (Serve)."""
    if plan.mode == Mode.TRAIN:
        return [Gang("all", tuple(plan.workers), plan, names.plan_configmap_name(job.name))]
    return [
        Gang(
            f"r{replica}",
            tuple(w for w in plan.workers if w.replica == replica),
            replica_plan(plan, replica),
            names.replica_configmap_name(job.name, replica),
        )
        for replica in range(plan.replicas)
    ]


def gang_configmap(job: JobRef, gang: Gang) -> Manifest:
    """Serve: the ConfigMap with one replica's one-replica plan (Train workers read the whole plan)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(job, gang.configmap, "plan", {names.REPLICA_LABEL: gang.key.removeprefix("r")}),
        "data": {names.PLAN_KEY: plan_json(gang.plan)},
    }


def gang_configmaps(job: JobRef, plan: Plan) -> list[Manifest]:
    """Serve: one ConfigMap per replica (none for Train)."""
    return [gang_configmap(job, gang) for gang in gangs(job, plan) if gang.key != "all"]


def worker_service(job: JobRef, spec: MaaSJobSpec) -> Manifest:
    """Headless Service: stable DNS `<worker>.<job>.<namespace>.svc` for every worker, ready or not (the
    rendezvous needs worker 0's name before anything is ready)."""
    ports = [
        {"name": "rendezvous", "port": RENDEZVOUS_PORT, "targetPort": RENDEZVOUS_PORT, "protocol": "TCP"}
    ]
    ports.append({"name": "progress", "port": DEFAULT_PROGRESS_PORT, "targetPort": DEFAULT_PROGRESS_PORT})
    if spec.mode == Mode.SERVE and spec.serving is not None:
        ports.append({"name": "http", "port": spec.serving.port, "targetPort": spec.serving.port})
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(job, names.service_name(job.name), "workers"),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {names.JOB_LABEL: job.name},
            "ports": ports,
        },
    }


def endpoint_service(job: JobRef, spec: MaaSJobSpec) -> Manifest:
    """Serve: the job's endpoint, a ClusterIP Service over every replica's first-stage worker. That pod is
    Ready only while the operator holds its PIPELINE_READY gate True (every stage of its replica ready), so
    the endpoints are exactly the replicas whose whole pipeline serves."""
    assert spec.serving is not None
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(job, names.endpoint_service_name(job.name), "endpoint"),
        "spec": {
            "type": "ClusterIP",
            "selector": {
                names.JOB_LABEL: job.name,
                names.COMPONENT_LABEL: "worker",
                names.PIPELINE_RANK_LABEL: "0",
            },
            "ports": [{"name": "http", "port": spec.serving.port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def endpoint_url(job: JobRef, spec: MaaSJobSpec) -> str:
    assert spec.serving is not None
    return f"http://{names.endpoint_service_name(job.name)}.{job.namespace}.svc:{spec.serving.port}"


def _env(spec: MaaSJobSpec, job: JobRef, gang: Gang, worker: WorkerPlan) -> list[Manifest]:
    first = min(gang.workers, key=lambda w: w.pipeline_rank if gang.key != "all" else w.index)
    endpoint = f"{first.name}.{names.service_name(job.name)}.{job.namespace}.svc:{RENDEZVOUS_PORT}"
    index = worker.pipeline_rank if gang.key != "all" else worker.index
    ours: list[Manifest] = [
        {"name": GANG_SIZE_ENV, "value": str(len(gang.workers))},
        {"name": "PET_NPROC_PER_NODE", "value": str(processes_per_worker(worker.gpus))},
        {"name": "PET_RDZV_BACKEND", "value": "c10d"},
        {"name": "PET_RDZV_ENDPOINT", "value": endpoint},
        {"name": RENDEZVOUS_ID_ENV, "value": ""},  # gang_pods fills in the gang's hash
        {"name": "PET_MAX_RESTARTS", "value": "0"},
        {"name": WORKER_INDEX_ENV, "value": str(index)},
        {"name": TERMINATION_MESSAGE_ENV, "value": TERMINATION_MESSAGE_PATH},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    ]
    # The user's variables come last: an explicit setting of theirs wins over ours.
    users = [variable.model_dump(mode="json", by_alias=True, exclude_none=True) for variable in spec.env]
    return ours + users


def _volumes(spec: MaaSJobSpec, gang: Gang) -> tuple[list[Manifest], list[Manifest]]:
    plan_dir = PLAN_PATH.rsplit("/", 1)[0]
    volumes: list[Manifest] = [
        {
            "name": PLAN_VOLUME,
            "configMap": {"name": gang.configmap, "items": [{"key": names.PLAN_KEY, "path": names.PLAN_KEY}]},
        },
        # NCCL and torch's shared-memory transport need more than the container runtime's 64 MiB default.
        {"name": SHM_VOLUME, "emptyDir": {"medium": "Memory"}},
    ]
    mounts: list[Manifest] = [
        {"name": PLAN_VOLUME, "mountPath": plan_dir, "readOnly": True},
        {"name": SHM_VOLUME, "mountPath": "/dev/shm"},
    ]
    if spec.data.volume is not None:
        volumes.append(
            {
                "name": DATA_VOLUME,
                "persistentVolumeClaim": {
                    "claimName": spec.data.volume.claim_name,
                    "readOnly": spec.data.volume.read_only,
                },
            }
        )
        mounts.append(
            {
                "name": DATA_VOLUME,
                "mountPath": spec.data.volume.mount_path,
                "readOnly": spec.data.volume.read_only,
            }
        )
    if spec.mode == Mode.TRAIN and spec.checkpoint is not None:
        volumes.append(
            {"name": CHECKPOINT_VOLUME, "persistentVolumeClaim": {"claimName": spec.checkpoint.claim_name}}
        )
        mounts.append({"name": CHECKPOINT_VOLUME, "mountPath": spec.checkpoint.mount_path})
    return volumes, mounts


def _resources(spec: MaaSJobSpec, gpus: int) -> Manifest:
    limits: dict[str, str] = {}
    if gpus > 0:
        limits["nvidia.com/gpu"] = str(gpus)
    if spec.resources.cpu is not None:
        limits["cpu"] = str(spec.resources.cpu)
    if spec.resources.memory is not None:
        limits["memory"] = str(spec.resources.memory)
    return {"limits": limits, "requests": dict(limits)} if limits else {}


def worker_pod(
    job: JobRef,
    spec: MaaSJobSpec,
    gang: Gang,
    worker: WorkerPlan,
    attempt: int,
    settings: OperatorSettings,
) -> Manifest:
    """One worker pod, pinned to its planned node, without the gang label and gate (see `gang_pods`)."""
    template = spec.template
    container: Manifest = {
        "name": WORKER_CONTAINER,
        "image": spec.image or settings.runtime_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": list(WORKER_COMMAND),
        "env": _env(spec, job, gang, worker),
        "ports": [
            {"name": "rendezvous", "containerPort": RENDEZVOUS_PORT},
            {"name": "progress", "containerPort": DEFAULT_PROGRESS_PORT},
        ],
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
        # The runtime writes why it failed there; the operator quotes it in the job's conditions.
        "terminationMessagePath": TERMINATION_MESSAGE_PATH,
        "terminationMessagePolicy": "File",
    }
    entry = spec.mode == Mode.SERVE and spec.serving is not None and worker.pipeline_rank == 0
    if entry:
        assert spec.serving is not None
        container["ports"].append({"name": "http", "containerPort": spec.serving.port})
        # 200 once a warm-up batch went through every stage, 503 while draining (maas_runtime.serve).
        container["readinessProbe"] = {
            "httpGet": {"path": "/healthz", "port": "http"},
            "periodSeconds": 2,
            "timeoutSeconds": 2,
            "failureThreshold": 2,
        }
    resources = _resources(spec, worker.gpus)
    if resources:
        container["resources"] = resources
    volumes, mounts = _volumes(spec, gang)
    container["volumeMounts"] = mounts
    pod_spec: Manifest = {
        "restartPolicy": "Never",
        "hostname": worker.name,
        "subdomain": names.service_name(job.name),
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_USER,
            "fsGroup": RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
    }
    if entry:
        # Ready also waits for the operator's word that every other stage of the replica is ready.
        pod_spec["readinessGates"] = [{"conditionType": names.PIPELINE_READY}]
    if worker.node is not None:
        # Pinned by node name, not by a label: the planner chose this exact node and counted its GPUs.
        pod_spec["affinity"] = {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [worker.node]}]}
                    ]
                }
            }
        }
    if spec.placement.node_selector:
        pod_spec["nodeSelector"] = dict(spec.placement.node_selector)
    if spec.placement.tolerations:
        pod_spec["tolerations"] = [
            t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in spec.placement.tolerations
        ]
    if template.service_account_name:
        pod_spec["serviceAccountName"] = template.service_account_name
    if template.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": secret} for secret in template.image_pull_secrets]
    if template.priority_class_name:
        pod_spec["priorityClassName"] = template.priority_class_name
    if template.scheduler_name:
        pod_spec["schedulerName"] = template.scheduler_name
    metadata = _metadata(
        job,
        worker.name,
        "worker",
        {
            **template.labels,
            names.REPLICA_LABEL: str(worker.replica),
            names.PIPELINE_RANK_LABEL: str(worker.pipeline_rank),
            names.WORKER_INDEX_LABEL: str(worker.index),
            names.ATTEMPT_LABEL: str(attempt),
        },
    )
    if template.annotations:
        metadata["annotations"] = dict(template.annotations)
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod_spec}
    return merge_pod_patch(pod, settings.worker_pod_patch) if settings.worker_pod_patch else pod


def content_hash(value: object, length: int = 10) -> str:
    """A short stable hash of JSON-able data (sorted keys), usable in labels and names."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def gang_pods(
    job: JobRef, spec: MaaSJobSpec, gang: Gang, attempt: int, settings: OperatorSettings, gated: bool
) -> list[Manifest]:
    """The gang's pods with its hash label and rendezvous id; `gated` adds the scheduling gate."""
    pods = [worker_pod(job, spec, gang, worker, attempt, settings) for worker in gang.workers]
    # The hash of the pods as built (rendezvous id still empty) names the gang and its rendezvous.
    gang_hash = content_hash([pods, plan_json(gang.plan)])
    for pod in pods:
        pod["metadata"]["labels"][names.GANG_LABEL] = gang_hash
        for container in pod["spec"]["containers"]:
            for variable in container.get("env", []):
                if variable["name"] == RENDEZVOUS_ID_ENV:
                    variable["value"] = f"{job.name}-{gang_hash}"
        if gated:
            pod["spec"]["schedulingGates"] = [{"name": names.GANG_GATE}]
    return pods


def gang_hash_of(pods: Sequence[Manifest]) -> str:
    return str(pods[0]["metadata"]["labels"][names.GANG_LABEL]) if pods else ""
