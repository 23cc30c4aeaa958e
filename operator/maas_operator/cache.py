"""The operator's picture of the cluster, kept current by watch events (never a List per reconcile).

Holds every MaaSJob, the worker pods and plan ConfigMaps of each job, the GPUs every pod holds, and the nodes.
`observe(key)` turns it into the `reconcile.Observed` of one job. The adapter also writes its own successful
writes through (`put_own_write`), so the next decision sees them before their watch events arrive.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from maas_api.job import ManifestError, parse_maasjob
from maas_api.plan import Plan
from maas_api.spec import MaaSJobSpec, Mode
from maas_api.status import ConditionType, MaaSJobStatus, Phase, Progress
from pydantic import ValidationError

from maas_operator import names
from maas_operator.children import JobRef
from maas_operator.planner import Node
from maas_operator.progress import progress_url
from maas_operator.reconcile import UNSCHEDULABLE, Observed
from maas_operator.world import GpuHolder, GpuLedger, gpu_holder, planner_node, worker_pod

log = logging.getLogger(__name__)

Body = Mapping[str, Any]

FINISHED_PHASES = frozenset({Phase.SUCCEEDED, Phase.FAILED})

RESERVED_UID_PREFIX = "reserved:"
"""UID of a pod recorded before its create (`reserve_pods`); the API server's UIDs never look like it."""
DELETED_UIDS_KEPT = 100_000
"""Deleted pod UIDs remembered (a late write-through comes within seconds; this is far more than enough)."""


def object_key(body: Body) -> str:
    metadata = body.get("metadata") or {}
    return f"{metadata.get('namespace') or 'default'}/{metadata.get('name', '')}"


def job_key_of(body: Body) -> str | None:
    """`namespace/job` of a child (by its job label), or None for objects that are not ours."""
    metadata = body.get("metadata") or {}
    job = (metadata.get("labels") or {}).get(names.JOB_LABEL)
    return f"{metadata.get('namespace') or 'default'}/{job}" if job else None


def name_of(key: str) -> str:
    return key.split("/", 1)[1]


def is_older(body: Body, cached: Body | None) -> bool:
    """True when `body` is an older version of `cached`. Watch events can trail the adapter's write-through
    of its own writes (an event of version N arrives after the answer of version N+1 was recorded), and a
    decision on the older version would redo or undo work. Resource versions of one resource compare as
    integers (KEP-5504, stable since Kubernetes 1.35); anything else is taken as newer."""
    if cached is None:
        return False
    new = str((body.get("metadata") or {}).get("resourceVersion") or "")
    old = str((cached.get("metadata") or {}).get("resourceVersion") or "")
    return new.isdigit() and old.isdigit() and int(new) < int(old)


def _same_pod(uid: str | None, cached_uid: str | None) -> bool:
    """Whether an event about `uid` concerns the cached pod (without both UIDs, assume it does)."""
    return not uid or not cached_uid or uid == cached_uid


def _node_summary(node: Node) -> tuple[object, ...]:
    """What placement reads of a node: heartbeats that change none of it wake no job."""
    return (node.gpus, node.ready, node.unschedulable, tuple(sorted(node.labels.items())), node.taints)


class WorldCache:
    def __init__(self) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}
        self.pods: dict[str, dict[str, dict[str, Any]]] = {}
        """job key -> pod name -> pod."""
        self.holders: dict[str, GpuHolder] = {}
        """pod key -> GPUs it holds (every pod in the cluster that holds any); change it through `_hold`."""
        self.ledger = GpuLedger()
        """The holders' GPUs summed per node and per job, so a decision reads them without a walk."""
        self.nodes: dict[str, Node] = {}
        self.plan_configmaps: dict[str, dict[str, Any]] = {}
        """job key -> its plan ConfigMap."""
        self.replica_configmaps: dict[str, set[str]] = {}
        """job key -> names of its per-replica plan ConfigMaps."""
        self._specs: dict[str, tuple[tuple[str, int], MaaSJobSpec | None, str]] = {}
        """job key -> ((uid, generation), parsed spec or None, why not), so a spec is validated once."""
        self._plans: dict[tuple[str, str], Plan | None] = {}
        """(job key, ConfigMap resourceVersion) -> parsed plan, so a plan is parsed once."""
        self._reservations = itertools.count()
        self._deleted_pod_uids: dict[str, None] = {}
        self.version = 0
        """Counts the changes to everything here: a decision made at one version holds while it is unchanged."""
        self.progress: dict[str, Progress] = {}
        """What worker 0 of each Train job last reported (the progress poller writes it)."""
        """UIDs of pods seen deleted, oldest first (an ordered set, at most DELETED_UIDS_KEPT)."""

    # -- watch events -------------------------------------------------------------------------------------

    def put_job(self, event_type: str | None, body: Body) -> str:
        self.version += 1
        key = object_key(body)
        if event_type == "DELETED":
            self.jobs.pop(key, None)
        elif not is_older(body, self.jobs.get(key)):
            self.jobs[key] = dict(body)
        return key

    def put_pod(self, event_type: str | None, body: Body) -> str | None:
        """Records a pod; returns the key of the job it belongs to, if any.

        A pod whose DELETED event was seen is never recorded again: the adapter's write-through of a delete
        or apply answer can arrive after the watch already reported the pod gone (kwok removes a deleted pod
        at once), and would otherwise leave a ghost that no later event removes. UIDs are never reused."""
        self.version += 1
        key = object_key(body)
        job_key = job_key_of(body)
        deleted = event_type == "DELETED"
        uid = (body.get("metadata") or {}).get("uid")
        if uid:
            if deleted:
                self._deleted_pod_uids[uid] = None
                while len(self._deleted_pod_uids) > DELETED_UIDS_KEPT:
                    del self._deleted_pod_uids[next(iter(self._deleted_pod_uids))]
            elif uid in self._deleted_pod_uids:
                return job_key
        if (
            not deleted
            and job_key is not None
            and is_older(body, self.pods.get(job_key, {}).get(name_of(key)))
        ):
            return job_key
        holder = None if deleted else gpu_holder(body)
        if holder is not None:
            self._hold(key, holder)
        elif _same_pod(uid, self.holders[key].uid if key in self.holders else None):
            self._hold(key, None)
        if job_key is not None:
            name = key.split("/", 1)[1]
            pods = self.pods.setdefault(job_key, {})
            if not deleted:
                pods[name] = dict(body)
            elif name in pods and _same_pod(uid, (pods[name].get("metadata") or {}).get("uid")):
                # A DELETED event that trails the creation of a new pod of the same name (a restarted
                # operator's watch starts late) concerns the old pod only.
                pods.pop(name)
        return job_key

    def _hold(self, key: str, holder: GpuHolder | None) -> None:
        """The pod `key` holds `holder`'s GPUs now (None: none), in `holders` and in the ledger."""
        before = self.holders.pop(key, None)
        if before is not None:
            self.ledger.add(before, -1)
        if holder is not None:
            self.holders[key] = holder
            self.ledger.add(holder)

    def put_node(self, event_type: str | None, body: Body) -> bool:
        """Records a node; True when something placement reads changed (heartbeats change nothing)."""
        self.version += 1
        name = str((body.get("metadata") or {}).get("name", ""))
        before = self.nodes.get(name)
        if event_type == "DELETED":
            self.nodes.pop(name, None)
            return before is not None
        node = planner_node(body)
        if node is None:
            log.warning("node %s: not readable by the planner, ignored", name)
            self.nodes.pop(name, None)
            return before is not None
        self.nodes[name] = node
        return before is None or _node_summary(before) != _node_summary(node)

    def put_configmap(self, event_type: str | None, body: Body) -> str | None:
        self.version += 1
        job_key = job_key_of(body)
        if job_key is None:
            return None
        name = str((body.get("metadata") or {}).get("name", ""))
        job = job_key.split("/", 1)[1]
        deleted = event_type == "DELETED"
        if name == names.plan_configmap_name(job):
            if deleted:
                self.plan_configmaps.pop(job_key, None)
            else:
                self.plan_configmaps[job_key] = dict(body)
        else:
            replicas = self.replica_configmaps.setdefault(job_key, set())
            if deleted:
                replicas.discard(name)
            else:
                replicas.add(name)
        return job_key

    def put_own_write(self, body: Body) -> bool:
        """An object as the answer to our own apply or delete returned it; False when it was ignored.

        The watch may have delivered a newer version of it meanwhile (the answer and the event race), or
        already reported a pod that we deleted gone: the answer must not bring back the older state, since no
        further event would ever correct it (a deleted pod kept as "terminating" would block its job).
        """
        kind = body.get("kind")
        if kind == "Pod":
            job_key = job_key_of(body)
            name = str((body.get("metadata") or {}).get("name", ""))
            cached = self.pods.get(job_key, {}).get(name) if job_key is not None else None
            if cached is None and (body.get("metadata") or {}).get("deletionTimestamp"):
                return False
            if is_older(body, cached):
                return False
            self.put_pod("MODIFIED", body)
        elif kind == "ConfigMap":
            job_key = job_key_of(body)
            if job_key is not None and is_older(body, self.plan_configmaps.get(job_key)):
                return False
            self.put_configmap("MODIFIED", body)
        else:
            key = object_key(body)
            if key not in self.jobs or is_older(body, self.jobs[key]):
                # A job missing here was deleted: only its watch event may add it back.
                return False
            self.put_job("MODIFIED", body)
        return True

    def reserve_pods(self, manifests: Sequence[Body]) -> list[dict[str, Any]]:
        """Records pods about to be created, before any request, so the next placement counts their GPUs while
        the creates are in flight; returns the records for `drop_unconfirmed`. Each carries a UID of its own
        (no pod has it, and no other reservation: a dropped one is remembered as deleted), so a late DELETED
        event of an older pod of the same name leaves it alone; the API server's answer or the watch event
        replaces it."""
        reserved: list[dict[str, Any]] = []
        for manifest in manifests:
            metadata = manifest.get("metadata") or {}
            record = {
                **manifest,
                "metadata": {**metadata, "uid": f"{RESERVED_UID_PREFIX}{next(self._reservations)}"},
            }
            job_key = self.put_pod(None, record)
            stored = self.pods.get(job_key, {}).get(name_of(object_key(manifest))) if job_key else None
            if stored is not None:
                reserved.append(stored)
        return reserved

    def drop_unconfirmed(self, reserved: Sequence[Body]) -> None:
        """Forgets the reservations that nothing replaced (their create failed or never went out)."""
        for record in reserved:
            job_key = job_key_of(record)
            name = name_of(object_key(record))
            if job_key is not None and self.pods.get(job_key, {}).get(name) is record:
                self.put_pod("DELETED", record)

    def forget_job(self, key: str) -> None:
        """The job is gone: its children go with it (owner references), so drop what we know of them."""
        self.version += 1
        self.jobs.pop(key, None)
        self.plan_configmaps.pop(key, None)
        self.replica_configmaps.pop(key, None)
        self.progress.pop(key, None)
        self._specs.pop(key, None)
        self._plans = {k: v for k, v in self._plans.items() if k[0] != key}

    def set_progress(self, key: str, progress: Progress) -> None:
        self.version += 1
        self.progress[key] = progress

    def active_job_keys(self) -> list[str]:
        return sorted(self.jobs)

    def progress_targets(self) -> list[tuple[str, str]]:
        """(job key, progress URL) of worker 0 of every unfinished Train job whose worker 0 runs."""
        targets = []
        for key, body in self.jobs.items():
            if (body.get("spec") or {}).get("mode") != Mode.TRAIN:
                continue
            if (body.get("status") or {}).get("phase") in FINISHED_PHASES:
                continue
            for pod in self.pods.get(key, {}).values():
                url = progress_url(pod)
                if url is not None:
                    targets.append((key, url))
                    break
        return targets

    def unschedulable_job_keys(self) -> list[str]:
        """Jobs waiting for room (Planned=False, Unschedulable): freed GPUs may let them run."""
        return sorted(
            key
            for key, body in self.jobs.items()
            if any(
                condition.get("type") == ConditionType.PLANNED
                and condition.get("status") == "False"
                and condition.get("reason") == UNSCHEDULABLE
                for condition in (body.get("status") or {}).get("conditions") or []
            )
        )

    # -- the picture of one job ---------------------------------------------------------------------------

    def _plan(self, key: str) -> tuple[Plan | None, str | None]:
        configmap = self.plan_configmaps.get(key)
        if configmap is None:
            return None, None
        metadata = configmap.get("metadata") or {}
        inputs = (metadata.get("annotations") or {}).get(names.PLAN_INPUTS_ANNOTATION)
        version = str(metadata.get("resourceVersion", ""))
        if (key, version) not in self._plans:
            text = (configmap.get("data") or {}).get(names.PLAN_KEY, "")
            try:
                self._plans[(key, version)] = Plan.model_validate_json(text)
            except ValidationError:
                # Someone edited it into something we cannot read: re-plan rather than crash.
                log.warning("%s: the plan ConfigMap does not parse; the job will be re-planned", key)
                self._plans[(key, version)] = None
        return self._plans[(key, version)], inputs

    def _spec(self, key: str, generation: int, body: Body) -> tuple[MaaSJobSpec | None, str]:
        """The job's spec, validated once per generation (the API server bumps it on every spec change), or
        why it does not validate."""
        # The uid too: a job deleted and made again under the same name starts at generation 1 again.
        version = (str((body.get("metadata") or {}).get("uid", "")), generation)
        cached = self._specs.get(key)
        if cached is not None and cached[0] == version:
            return cached[1], cached[2]
        namespace, name = key.split("/", 1)
        spec, spec_error = None, ""
        try:
            spec = parse_maasjob(
                {
                    "apiVersion": body.get("apiVersion", "maas.dev/v1alpha1"),
                    "kind": body.get("kind", "MaaSJob"),
                    "metadata": {"name": name, "namespace": namespace},
                    "spec": body.get("spec") or {},
                }
            ).spec
        except ManifestError as error:
            spec_error = "; ".join(error.problems)
        self._specs[key] = (version, spec, spec_error)
        return spec, spec_error

    def observe(self, key: str, now: datetime) -> Observed | None:
        body = self.jobs.get(key)
        if body is None:
            return None
        metadata = body.get("metadata") or {}
        namespace, name = key.split("/", 1)
        job = JobRef(name=name, namespace=namespace, uid=str(metadata.get("uid", "")))
        generation = int(metadata.get("generation") or 1)
        spec, spec_error = self._spec(key, generation, body)
        try:
            status = MaaSJobStatus.model_validate(body.get("status") or {})
        except ValidationError:
            log.warning("%s: the stored status does not parse; starting from an empty one", key)
            status = MaaSJobStatus()
        plan, inputs = self._plan(key)
        surge = (self.plan_configmaps.get(key, {}).get("metadata", {}).get("annotations") or {}).get(
            names.SURGE_ANNOTATION, "0"
        )
        return Observed(
            job=job,
            generation=generation,
            spec=spec,
            spec_error=spec_error,
            status=status,
            plan=plan,
            plan_inputs=inputs,
            pods=tuple(worker_pod(pod) for pod in self.pods.get(key, {}).values()),
            nodes=tuple(self.nodes.values()),
            used_gpus=self.ledger.held_by_others(key),
            now=now,
            replica_configmaps=frozenset(self.replica_configmaps.get(key, set())),
            progress=self.progress.get(key),
            # Someone's edit that is not a count: no surge (the plan is re-made from the spec anyway).
            plan_surge=int(surge)
            if surge.isdigit() and plan is not None and int(surge) < plan.replicas
            else 0,
        )
