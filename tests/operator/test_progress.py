"""Training progress: which worker is asked, the poller against the runtime's own endpoint, and the status."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import aiohttp
from maas_api.contract import PROGRESS_PORT_ENV, ProgressReport
from maas_api.status import Progress
from maas_operator import names
from maas_operator.progress import ProgressPoller, progress_url, same_progress, status_progress
from maas_operator.reconcile import reconcile
from maas_operator.settings import OperatorSettings
from maas_runtime.progress import TrainProgress, serve_progress

from tests.operator.fakes import FakeWorld, train_manifest


def worker_pod(
    index: str = "0", phase: str = "Running", ip: str | None = "10.0.0.7", **extra: Any
) -> dict[str, Any]:
    pod: dict[str, Any] = {
        "metadata": {"name": f"job-w{index}", "labels": {names.WORKER_INDEX_LABEL: index}},
        "spec": {"containers": [{"name": "worker", "env": extra.pop("env", [])}]},
        "status": {"phase": phase, **({"podIP": ip} if ip else {})},
    }
    pod["metadata"].update(extra)
    return pod


def test_only_a_running_worker_0_with_an_address_is_asked() -> None:
    assert progress_url(worker_pod()) == "http://10.0.0.7:9400/progress"
    assert progress_url(worker_pod(index="1")) is None
    assert progress_url(worker_pod(phase="Pending")) is None
    assert progress_url(worker_pod(ip=None)) is None
    assert progress_url(worker_pod(deletionTimestamp="2026-12-02T00:00:00Z")) is None
    assert progress_url(worker_pod(ip="fd00::7")) == "http://[fd00::7]:9400/progress"


def test_a_pod_patch_that_moves_the_port_is_followed() -> None:
    pod = worker_pod(env=[{"name": PROGRESS_PORT_ENV, "value": "9555"}])
    assert progress_url(pod) == "http://10.0.0.7:9555/progress"


def test_a_reread_of_the_same_step_is_not_a_change() -> None:
    report = ProgressReport(
        job="j",
        namespace="ns",
        phase="Training",
        step=4,
        total_steps=10,
        loss=0.25,
        samples_per_second=3.0,
        samples_seen=64,
        elapsed_seconds=1.0,
    )
    first = status_progress(report, datetime(2026, 1, 1, tzinfo=UTC))
    again = status_progress(report, datetime(2026, 1, 2, tzinfo=UTC))
    assert same_progress(first, again)
    assert not same_progress(first, status_progress(report.model_copy(update={"step": 5}), first.updated_at))
    finished = status_progress(report.model_copy(update={"phase": "Finished"}), first.updated_at)
    assert finished.finished and not first.finished
    assert same_progress(None, None) and not same_progress(first, None)


def test_the_poller_reads_the_runtimes_own_endpoint_and_reports_only_changes() -> None:
    progress = TrainProgress("job", "ns", total_steps=10)
    progress.update(phase="Training", step=3, loss=0.5, samples_per_second=100.0, last_checkpoint_step=2)
    server = serve_progress(progress, 0)
    url = f"http://127.0.0.1:{server.port}/progress"
    changes: list[tuple[str, Progress]] = []
    poller = ProgressPoller(lambda: [("ns/job", url)], lambda key, p: changes.append((key, p)), 0.01)

    async def two_polls() -> None:
        async with aiohttp.ClientSession() as session:
            await poller.poll_once(session)
            await poller.poll_once(session)  # the same step: no second change
            progress.update(step=4, phase="Finished")
            await poller.poll_once(session)

    try:
        asyncio.run(two_polls())
    finally:
        server.close()
    assert [key for key, _ in changes] == ["ns/job", "ns/job"]
    first, last = changes[0][1], changes[1][1]
    assert (first.step, first.total_steps, first.loss, first.last_checkpoint_step) == (3, 10, 0.5, 2)
    assert (last.step, last.finished) == (4, True)
    assert progress.final_state_served.is_set()  # rank 0 may now exit


def test_a_worker_that_does_not_answer_is_asked_less_often() -> None:
    changes: list[str] = []
    # Port 9 (discard) on loopback: refused at once.
    poller = ProgressPoller(
        lambda: [("ns/job", "http://127.0.0.1:9/progress")], lambda k, _: changes.append(k), 1.0
    )

    async def polls() -> list[float]:
        waits = []
        async with aiohttp.ClientSession() as session:
            for _ in range(3):
                await poller.poll_once(session)
                target = poller._known["ns/job"]
                waits.append(target.next_ask)
                target.next_ask = 0.0  # due again for the next round
        return waits

    waits = asyncio.run(polls())
    assert changes == []
    assert poller._known["ns/job"].failures == 3
    assert waits[0] < waits[1] < waits[2]  # 2 s, 4 s, 8 s after each failed ask


def test_reconcile_copies_the_last_reading_into_the_status() -> None:
    world = FakeWorld(train_manifest())
    world.step()
    reading = Progress(step=7, total_steps=10, loss=0.125, updated_at=world.now)
    decision = reconcile(replace(world.observe(), progress=reading), OperatorSettings())
    assert decision.status.progress == reading
    # Without a reading (an operator restart) the stored progress stays as it was.
    assert reconcile(world.observe(), OperatorSettings()).status.progress is None
