"""Names of everything the operator creates: child objects, labels, annotations, the field manager.

One place, so the builders (`children`), the observers (`world`) and the tests agree on them.
"""

from __future__ import annotations

from maas_api.job import GROUP

FIELD_MANAGER = "maas-operator"
"""Server-side apply field manager of every child object and status write."""

JOB_LABEL = f"{GROUP}/job"
"""Job name, on every child (the scale subresource's selector is `maas.dev/job=<name>`)."""
REPLICA_LABEL = f"{GROUP}/replica"
PIPELINE_RANK_LABEL = f"{GROUP}/stage"
"""The worker's pipeline rank (its first model stage; with Interleaved1F1B it runs more)."""
WORKER_INDEX_LABEL = f"{GROUP}/worker-index"
ATTEMPT_LABEL = f"{GROUP}/attempt"
"""Gang attempt (status.attempt when the pod was made), for people and `kubectl get -l`."""
GANG_LABEL = f"{GROUP}/gang"
"""Hash of the gang's desired pods: a pod whose hash differs from the desired one is stale."""
COMPONENT_LABEL = "app.kubernetes.io/component"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"

PLAN_INPUTS_ANNOTATION = f"{GROUP}/plan-inputs"
"""On the plan ConfigMap: hash of the spec fields the plan was made from; another hash means re-plan."""
PLAN_KEY = "plan.json"
"""Key of the plan document in the plan ConfigMap(s)."""
GANG_GATE = f"{GROUP}/gang"
"""Scheduling gate on every new worker pod, lifted once every pod of its gang exists."""
PIPELINE_READY = f"{GROUP}/pipeline-ready"
"""Serve: readiness gate of each replica's first-stage worker. The operator sets this pod condition True only
while every stage of the replica is ready, so the pod is Ready (and in the endpoint) only then; False with
reason DRAINING takes a replica out of the endpoint before its workers are stopped."""
DRAINING = "Draining"
"""Reason of PIPELINE_READY=False on a replica being removed (its pods are deleted after serving.drainSeconds)."""
SURGE_ANNOTATION = f"{GROUP}/surge-replicas"
"""On the plan ConfigMap: how many of the plan's replicas are a rollout's surge beyond spec replicas."""


def plan_configmap_name(job: str) -> str:
    """The whole plan of the job (the operator's record of its placement)."""
    return f"{job}-plan"


def replica_configmap_name(job: str, replica: int) -> str:
    """Serve: the one-replica plan that the workers of `replica` read (each replica is its own world)."""
    return f"{job}-plan-r{replica}"


def service_name(job: str) -> str:
    """The headless Service that gives workers stable DNS names (the job name is a DNS-1035 label)."""
    return job


def endpoint_service_name(job: str) -> str:
    """Serve: the Service in front of the replicas' first-stage workers (status.endpoint)."""
    return f"{job}-endpoint"


def selector(job: str, serve: bool = False) -> str:
    """Label selector of the job's worker pods (status.selector, for the scale subresource). Serve selects one
    pod per replica, its first-stage worker (the one that answers and exports the load metrics), so an
    autoscaler averages per replica."""
    return f"{JOB_LABEL}={job},{PIPELINE_RANK_LABEL}=0" if serve else f"{JOB_LABEL}={job}"
