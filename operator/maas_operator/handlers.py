"""kopf registrations only: watch events feed the caches and the work queue; the controller does the rest.

No change-detecting handlers (on.create/on.update) and no timers or daemons: those make kopf add finalizers
and keep its own state on our objects. Plain event handlers keep MaaSJobs free of finalizers (deleting a job
never waits for the operator; owner references remove its children).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import kopf
from maas_api.job import GROUP, PLURAL, VERSION

from maas_operator import metrics, names
from maas_operator.controller import Controller
from maas_operator.kube import Kube, connect
from maas_operator.settings import OperatorSettings

log = logging.getLogger(__name__)

# One controller per operator process; set at start-up. Every handler below is a coroutine function, so kopf
# calls it in the operator's event loop: kopf runs plain functions in a thread pool, where they would change the
# caches and the work queue (asyncio objects, not thread-safe) beside the loop, and cost a thread hand-off per
# watch event.
_controller: Controller | None = None


def _the_controller() -> Controller:
    if _controller is None:
        raise kopf.TemporaryError("the operator is still starting", delay=1)
    return _controller


class NoDiffBase(kopf.DiffBaseStorage):
    """No diff base: kopf builds one (a deep copy of the object) for every watch event of every watched
    object, for change-detecting handlers to diff against. We register none, so nothing would read it, and
    with thousands of pods those copies were half of the operator's CPU (benchmarks/operator_scale.py)."""

    def build(
        self, *, body: kopf.Body, extra_fields: Iterable[kopf.FieldSpec] | None = None
    ) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


def configure_kopf(settings: kopf.OperatorSettings) -> None:
    """kopf's settings, each for a reason."""
    # Our prefix, never kopf's defaults: no collision with another kopf operator on the same objects.
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = NoDiffBase()
    # Silent watch stalls are kopf's most reported problem: end every watch request server-side after
    # 4.5 minutes, give the client a little more, and reconnect after 70 s without any event or bookmark.
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300
    settings.watching.connect_timeout = 10
    settings.watching.inactivity_timeout = 70
    # The operator posts its own events (controller -> kube.post_event); kopf's per-handler log events
    # would flood `kubectl describe` with one line per watch event.
    settings.posting.enabled = False
    # No watching of CRDs and namespaces: the MaaSJob CRD is installed before the operator (Helm's crds/),
    # and namespaces are given by exact name, so the operator's RBAC needs neither.
    settings.scanning.disabled = True


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    global _controller
    configure_kopf(settings)
    # main() resolves flags and environment into memo.settings; a bare `kopf run` reads the environment.
    operator_settings = memo.get("settings") or OperatorSettings.from_environment()
    metrics.serve(operator_settings.metrics_port)
    controller = Controller(Kube(await connect()), operator_settings)
    await controller.prime()
    controller.start()
    _controller = controller
    log.info(
        "maas-operator started: %d reconcile workers, %d nodes, %d jobs",
        operator_settings.workers,
        len(controller.cache.nodes),
        len(controller.cache.jobs),
    )


@kopf.on.cleanup()
async def stop(**_: Any) -> None:
    if _controller is not None:
        await _controller.stop()
        await _controller.kube.close()


@kopf.on.probe(id="reconciler")
async def probe(**_: Any) -> dict[str, Any]:
    return _the_controller().healthy()


@kopf.on.event(GROUP, VERSION, PLURAL)
async def job_event(event: kopf.RawEvent, **_: Any) -> None:
    _the_controller().on_job(event.get("type"), dict(event["object"]))


@kopf.on.event("", "v1", "pods")
async def pod_event(event: kopf.RawEvent, **_: Any) -> None:
    # Every pod, not only ours: any pod holding GPUs on a node takes them from the planner.
    _the_controller().on_pod(event.get("type"), dict(event["object"]))


@kopf.on.event("", "v1", "nodes")
async def node_event(event: kopf.RawEvent, **_: Any) -> None:
    _the_controller().on_node(event.get("type"), dict(event["object"]))


@kopf.on.event("", "v1", "configmaps", labels={names.JOB_LABEL: kopf.PRESENT})
async def configmap_event(event: kopf.RawEvent, **_: Any) -> None:
    _the_controller().on_configmap(event.get("type"), dict(event["object"]))
