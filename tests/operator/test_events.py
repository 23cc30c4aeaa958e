"""The operator's events go out off the reconcile path: a reconcile never waits for a POST, repeats of one
event are posted once with their count, a refused post is logged and the rest still go out, and an operator
that stops posts what it has queued."""

from __future__ import annotations

import asyncio
import logging
from typing import cast

import pytest
from kubernetes_asyncio.client.exceptions import ApiException
from maas_operator.children import JobRef
from maas_operator.controller import Controller
from maas_operator.events import EventPoster
from maas_operator.kube import Kube
from maas_operator.reconcile import Event
from maas_operator.settings import OperatorSettings

JOB = JobRef(name="job", namespace="ns", uid="u1")
OTHER = JobRef(name="other", namespace="ns", uid="u2")


class SlowServer:
    """Posts wait until `release` is set; `refuse` names reasons the server answers 422."""

    def __init__(self, refuse: frozenset[str] = frozenset()) -> None:
        self.release = asyncio.Event()
        self.posted: list[tuple[str, str, int]] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.refuse = refuse

    async def post_event(self, job: JobRef, event: Event, count: int = 1) -> None:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await self.release.wait()
            if event.reason in self.refuse:
                raise ApiException(status=422, reason="Unprocessable Entity")
            self.posted.append((job.name, event.reason, count))
        finally:
            self.in_flight -= 1


def test_handing_an_event_over_never_waits_and_repeats_go_out_once_counted() -> None:
    async def scenario() -> SlowServer:
        server = SlowServer()
        poster = EventPoster(server.post_event, concurrency=2)
        poster.post(JOB, Event("Normal", "Planned", "4 workers"))
        poster.post(JOB, Event("Warning", "FailedCreate", "Pod job-r0-s0: forbidden"))
        poster.post(OTHER, Event("Normal", "Planned", "4 workers"))
        await asyncio.sleep(0.01)  # the first two are in flight and held by the server
        for _ in range(3):
            poster.post(JOB, Event("Warning", "FailedCreate", "Pod job-r0-s0: forbidden"))
        poster.post(JOB, Event("Warning", "FailedCreate", "Pod job-r0-s1: forbidden"))
        assert server.posted == [] and len(poster) == 3
        server.release.set()
        assert await poster.flush(timeout=5)
        assert poster.aggregated == 2
        return server

    server = asyncio.run(scenario())
    assert server.posted == [
        ("job", "Planned", 1),
        ("job", "FailedCreate", 1),
        ("other", "Planned", 1),
        ("job", "FailedCreate", 3),  # handed over three times while the first was already out
        ("job", "FailedCreate", 1),  # another message is another event
    ]
    assert server.most_in_flight == 2


def test_a_refused_event_is_logged_and_the_others_still_go_out(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> SlowServer:
        server = SlowServer(refuse=frozenset({"Planned"}))
        server.release.set()
        poster = EventPoster(server.post_event)
        poster.post(JOB, Event("Normal", "Planned", "4 workers"))
        poster.post(JOB, Event("Normal", "WorkersCreated", "created 4 worker pod(s)"))
        assert await poster.flush(timeout=5)
        return server

    with caplog.at_level(logging.WARNING, logger="maas_operator.events"):
        server = asyncio.run(scenario())
    assert server.posted == [("job", "WorkersCreated", 1)]
    assert "event Planned not posted" in caplog.text


def test_a_reconcile_does_not_wait_for_its_events_and_a_stopping_controller_posts_them() -> None:
    from tests.operator.test_placement_lock import RecordingKube, add_job

    async def scenario() -> tuple[list[str], list[str]]:
        kube = RecordingKube()
        server = SlowServer()
        controller = Controller(cast(Kube, kube), OperatorSettings())
        kube.controller = controller
        controller.events = EventPoster(server.post_event)
        controller.on_node(
            "ADDED",
            {
                "kind": "Node",
                "metadata": {"name": "n0", "labels": {"kubernetes.io/hostname": "n0"}},
                "status": {
                    "allocatable": {"nvidia.com/gpu": "8"},
                    "conditions": [{"type": "Ready", "status": "True"}],
                },
            },
        )
        key = add_job(controller, "job")
        # The server holds every event: the reconcile still finishes, its pods made.
        await asyncio.wait_for(controller.reconcile(key), timeout=5)
        made = [what for what, _ in kube.calls]
        assert server.posted == []
        server.release.set()
        await controller.stop()
        return made, [reason for _, reason, _ in server.posted]

    made, posted = asyncio.run(scenario())
    assert made.count("Pod created gated") == 4 and made.count("Pod gates lifted") == 4
    assert posted == ["WorkersCreated"]
