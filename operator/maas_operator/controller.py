"""The reconcile loop: takes job keys from the work queue, asks `reconcile` for a decision, carries it out.

The only stateful part of the operator besides the caches. One asyncio lock serialises the decisions that
place pods (new plans and new pods), so two jobs never count the same free GPUs: the second decides after the
first's pods are in the cache, where they are recorded before their creates go out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from kubernetes_asyncio.client.exceptions import ApiException
from maas_api.job import GROUP, KIND, PLURAL, VERSION
from maas_api.status import Progress

from maas_operator import metrics, names
from maas_operator.cache import WorldCache, object_key
from maas_operator.children import Manifest
from maas_operator.events import EventPoster
from maas_operator.kube import Kube, api_message
from maas_operator.progress import ProgressPoller
from maas_operator.reconcile import Decision, Event, Observed, reconcile
from maas_operator.settings import OperatorSettings
from maas_operator.workqueue import WorkQueue
from maas_operator.world import WorkerPod

log = logging.getLogger(__name__)

MAX_ERROR_BACKOFF_SECONDS = 60.0
REFUSED_STATUSES = frozenset({400, 403, 422})
"""API answers that refuse a child for a reason its job's owner can fix (a missing ServiceAccount or
PriorityClass, a quota, an invalid template field): posted on the job as a FailedCreate event."""


def apply_waves(manifests: Sequence[Manifest]) -> list[list[Manifest]]:
    """A decision's applies, in order, cut into waves whose objects may be applied concurrently.

    A wave is a run of pods of one gate state, or a run of the objects pods need (the Service and the plans,
    which need nothing of each other), with distinct names, so the order that matters is kept: the Service
    and the plans exist before any pod, and every gated pod of a gang exists before any gate is lifted
    (lifting the gate of a pod made earlier must not race the creation of its missing peers).
    """
    waves: list[list[Manifest]] = []
    in_wave: set[str] = set()
    for manifest in manifests:
        name = manifest["metadata"]["name"]
        if not waves or _wave_kind(manifest) != _wave_kind(waves[-1][0]) or name in in_wave:
            waves.append([])
            in_wave = set()
        waves[-1].append(manifest)
        in_wave.add(name)
    return waves


def new_pods(manifests: Sequence[Manifest], existing: Sequence[WorkerPod]) -> list[Manifest]:
    """The pods a decision creates: the first apply of each pod that does not exist yet."""
    present = {pod.name for pod in existing}
    created = []
    for manifest in manifests:
        name = manifest["metadata"]["name"]
        if manifest["kind"] == "Pod" and name not in present:
            created.append(manifest)
            present.add(name)
    return created


class StaleChildError(RuntimeError):
    """A child to create exists already as something else (the cache was behind the cluster): retried."""


def _gang_of(pod: Manifest) -> str | None:
    labels = (pod.get("metadata") or {}).get("labels") or {}
    gang = labels.get(names.GANG_LABEL)
    return str(gang) if gang is not None else None


def _wave_kind(manifest: Manifest) -> tuple[bool, bool]:
    """(is a pod, is gated)."""
    return manifest["kind"] == "Pod", bool((manifest.get("spec") or {}).get("schedulingGates"))


class Controller:
    def __init__(self, kube: Kube, settings: OperatorSettings) -> None:
        self.kube = kube
        self.settings = settings
        self.cache = WorldCache()
        self.queue = WorkQueue()
        self.placement_lock = asyncio.Lock()
        self._errors: Counter[str] = Counter()
        self._phases: dict[str, str] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.events = EventPoster(lambda job, event, count: self.kube.post_event(job, event, count))
        self.progress = ProgressPoller(
            self.cache.progress_targets, self._on_progress, settings.progress_interval_seconds
        )

    async def prime(self) -> None:
        """Fills the caches with one List of each collection before the first decision (the watches only
        start delivering once kopf is up, and a decision on a half-filled cache would redo work)."""
        for node in await self.kube.list_cluster("/api/v1/nodes"):
            self.cache.put_node(None, node)
        # Every namespace in one List each, or each watched namespace (a namespaced install may read no more).
        scopes = [f"/namespaces/{ns}" for ns in self.settings.watch_namespaces] or [""]
        for scope in scopes:
            for pod in await self.kube.list_cluster(f"/api/v1{scope}/pods"):
                self.cache.put_pod(None, pod)
            for configmap in await self.kube.list_cluster(f"/api/v1{scope}/configmaps", names.JOB_LABEL):
                self.cache.put_configmap(None, configmap)
            for job in await self.kube.list_cluster(f"/apis/{GROUP}/{VERSION}{scope}/{PLURAL}"):
                self.queue.add(self.cache.put_job(None, job))

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._worker(), name=f"reconcile-{i}") for i in range(self.settings.workers)
        ]
        if self.settings.progress_interval_seconds > 0:
            self._tasks.append(asyncio.create_task(self.progress.run(), name="progress"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.events.close()

    def healthy(self) -> dict[str, Any]:
        """For kopf's liveness probe: the workers are alive and the queue is not stuck."""
        alive = sum(1 for task in self._tasks if not task.done())
        if self._tasks and alive == 0:
            raise RuntimeError("every reconcile worker has stopped")
        return {"workers": alive, "queued": len(self.queue), "jobs": len(self.cache.jobs)}

    # -- events from kopf ---------------------------------------------------------------------------------

    def on_job(self, event_type: str | None, body: dict[str, Any]) -> None:
        key = self.cache.put_job(event_type, body)
        if event_type == "DELETED":
            self.cache.forget_job(key)
            self.progress.forget(key)
            self.queue.forget(key)
            self._phases.pop(key, None)
            self._count_phases()
        else:
            self.queue.add(key)

    def _on_progress(self, key: str, progress: Progress) -> None:
        self.cache.set_progress(key, progress)
        self.queue.add(key)

    def on_pod(self, event_type: str | None, body: dict[str, Any]) -> None:
        pod_key = object_key(body)
        held_gpus = pod_key in self.cache.holders
        job_key = self.cache.put_pod(event_type, body)
        if job_key is not None and job_key in self.cache.jobs:
            self.queue.add(job_key)
        if held_gpus and pod_key not in self.cache.holders:
            # GPUs freed (the pod finished or is gone): a job waiting for room may fit now.
            for key in self.cache.unschedulable_job_keys():
                self.queue.add(key)

    def on_node(self, event_type: str | None, body: dict[str, Any]) -> None:
        if self.cache.put_node(event_type, body):
            # Capacity or health changed: any job may now fit, or have lost a worker.
            for key in self.cache.active_job_keys():
                self.queue.add(key)

    def on_configmap(self, event_type: str | None, body: dict[str, Any]) -> None:
        job_key = self.cache.put_configmap(event_type, body)
        if job_key is not None and event_type == "DELETED" and job_key in self.cache.jobs:
            self.queue.add(job_key)

    # -- the loop -----------------------------------------------------------------------------------------

    async def _worker(self) -> None:
        while True:
            key = await self.queue.get()
            try:
                await self.reconcile(key)
            except asyncio.CancelledError:
                raise
            except Exception:
                self._errors[key] += 1
                delay = min(MAX_ERROR_BACKOFF_SECONDS, 0.5 * 2 ** min(self._errors[key], 10))
                log.exception("%s: reconcile failed (retry in %.1f s)", key, delay)
                metrics.RECONCILE_ERRORS.inc()
                self.queue.add(key, after=delay)
            else:
                self._errors.pop(key, None)
            finally:
                self.queue.done(key)
                metrics.QUEUE_DEPTH.set(len(self.queue))

    def _decide(self, observed: Observed) -> Decision:
        started = time.perf_counter()
        decision = reconcile(observed, self.settings)
        if decision.planned:
            metrics.PLANNING_SECONDS.observe(time.perf_counter() - started)
        return decision

    async def reconcile(self, key: str) -> None:
        with metrics.RECONCILE_SECONDS.time():
            observed = self.cache.observe(key, datetime.now(UTC))
            if observed is None:
                return
            version = self.cache.version
            decision = self._decide(observed)
            if not (decision.planned or decision.creates_pods(observed.pods)):
                await self._carry_out(key, observed, decision)
                return
            async with self.placement_lock:
                if self.cache.version != version:
                    # Decide again under the lock: another job may have placed pods meanwhile (unchanged, the
                    # decision stands: planning is the costliest part of a reconcile, made once).
                    observed = self.cache.observe(key, datetime.now(UTC))
                    if observed is None:
                        return
                    decision = self._decide(observed)
                # The new pods go into the cache before any request: the next decision counts their GPUs while
                # this one's requests are in flight, so the lock never waits for the API server.
                reserved = self.cache.reserve_pods(new_pods(decision.apply, observed.pods))
            try:
                await self._carry_out(key, observed, decision)
            finally:
                self.cache.drop_unconfirmed(reserved)

    async def _carry_out(self, key: str, observed: Observed, decision: Decision) -> None:
        job = observed.job
        status = decision.status
        # Status first: a restart's new attempt is on record before the old gang is deleted, so a crash in
        # between can neither lose nor double-count it.
        wire = status.to_wire()
        if wire != observed.status.to_wire():
            try:
                self.cache.put_own_write(await self.kube.apply_status(job, wire))
            except ApiException as error:
                if error.status == 404:
                    return
                raise
        restarts = status.restarts - observed.status.restarts
        disruptions = status.disruptions - observed.status.disruptions
        if restarts > 0:
            metrics.RESTARTS.labels(cause="failure").inc(restarts)
        if disruptions > 0:
            metrics.RESTARTS.labels(cause="disruption").inc(disruptions)
        existing = {pod.name for pod in observed.pods}
        for wave in apply_waves(decision.apply):
            # One round trip per wave rather than per object: a gang's pods are created (and then ungated)
            # together, which shortens the time the placement lock is held by a factor of the gang size.
            results = await asyncio.gather(
                *(self._write(manifest, existing) for manifest in wave), return_exceptions=True
            )
            existing |= {
                m["metadata"]["name"]
                for m, result in zip(wave, results, strict=True)
                if m["kind"] == "Pod" and isinstance(result, dict)
            }
            failure: BaseException | None = None
            for manifest, result in zip(wave, results, strict=True):
                if isinstance(result, BaseException):
                    if (
                        failure is None
                        and isinstance(result, ApiException)
                        and result.status in REFUSED_STATUSES
                    ):
                        # Only the operator's log would say why the job makes no progress: tell its owner.
                        kind, name = manifest["kind"], manifest["metadata"]["name"]
                        message = f"{kind} {name}: {api_message(result)}"
                        self.events.post(job, Event("Warning", "FailedCreate", message))
                    failure = failure or result
                elif manifest["kind"] in {"Pod", "ConfigMap"} and result is not None:
                    self.cache.put_own_write(result)
            if failure is not None:
                raise failure
        for change in decision.pod_conditions:
            answer = await self.kube.set_pod_condition(
                job.namespace,
                change.pod,
                {
                    "type": change.type,
                    "status": "True" if change.status else "False",
                    "reason": change.reason,
                    "message": change.message[:1000],
                    "lastTransitionTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                },
            )
            if answer is not None:
                self.cache.put_own_write(answer)
        for deletion in decision.delete_pods:
            answer = await self.kube.delete(
                "Pod", job.namespace, deletion.name, grace_seconds=0 if deletion.force else None
            )
            metadata = (answer or {}).get("metadata") or {}
            if answer is not None and answer.get("kind") == "Pod" and metadata.get("deletionTimestamp"):
                if deletion.force and not metadata.get("finalizers"):
                    # Grace period 0 and no finalizer: the API server removed it at once (the answer is its
                    # last state). Kept as terminating, it would wait for a DELETED event that can be missed:
                    # a restarted operator deletes before kopf's watch begins.
                    self.cache.put_pod("DELETED", answer)
                else:
                    self.cache.put_own_write(answer)
            else:
                self._forget_pod(job.namespace, job.name, deletion.name)
        for name in decision.verify_pods:
            current = await self.kube.get("Pod", job.namespace, name)
            if current is None:
                log.info("%s: pod %s was gone without a watch event; forgotten", key, name)
                self._forget_pod(job.namespace, job.name, name)
            else:
                self.cache.put_own_write(current)
        for name in decision.delete_configmaps:
            await self.kube.delete("ConfigMap", job.namespace, name)
        for event in decision.events:
            self.events.post(job, event)
        if decision.delete_job:
            log.info("%s: ttlSecondsAfterFinished has passed; deleting the job", key)
            await self.kube.delete(KIND, job.namespace, job.name)
            return
        if decision.requeue_after is not None:
            self.queue.add(key, after=max(0.05, decision.requeue_after))
        self.queue.add(key, after=self.settings.resync_seconds)
        self._phases[key] = status.phase
        self._count_phases()

    async def _write(self, manifest: Manifest, existing: set[str]) -> dict[str, Any] | None:
        """The request that makes the cluster hold `manifest`; None when the pod it concerns is gone.

        A new gated pod is created (POST) and an existing pod's gates are lifted with a patch of that field:
        for the API server both cost less than server-side applies of the whole pod, which the gang's pods
        would otherwise each get twice. Everything else is applied server-side, so applying it again is a
        no-op. A create that finds the pod there after all (a cache behind the cluster) reads it instead."""
        if manifest["kind"] == "Pod":
            namespace, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
            gated = bool(manifest["spec"].get("schedulingGates"))
            if gated and name not in existing:
                created = await self.kube.create(manifest)
                if created is not None:
                    return created
                found = await self.kube.get("Pod", namespace, name)
                if found is not None and _gang_of(found) != _gang_of(manifest):
                    # Another gang's pod holds the name: its gang must not be released with this one. The
                    # next decision sees it (recorded now) and deletes it first.
                    self.cache.put_own_write(found)
                    raise StaleChildError(f"pod {namespace}/{name} exists from another gang")
                return found
            if not gated and name in existing:
                return await self.kube.lift_gates(namespace, name)
        return await self.kube.apply(manifest)

    def _forget_pod(self, namespace: str, job: str, name: str) -> None:
        """A pod known to be gone: the job label files it under its job (without it only the GPU count
        would forget it)."""
        gone = {"name": name, "namespace": namespace, "labels": {names.JOB_LABEL: job}}
        self.cache.put_pod("DELETED", {"metadata": gone})

    def _count_phases(self) -> None:
        counts = Counter(self._phases.values())
        for phase in ("Pending", "Running", "Restarting", "Succeeded", "Failed", "Suspended"):
            metrics.JOBS.labels(phase=phase).set(counts.get(phase, 0))
