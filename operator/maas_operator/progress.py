"""Training progress: the operator reads global rank 0's `/progress` into status.progress.

The runtime serves a ProgressReport (maas_api.contract) on worker 0 of a Train job. Polling, rather than workers
writing to the API server, keeps workers free of API credentials and puts the write rate in the operator's hands:
status changes only when the step, loss or phase moved. Rank 0 keeps the endpoint up after the last step until it
has been read once (maas_runtime.progress), so the final loss reaches the status before the job Succeeds.

A worker that does not answer (still starting, or a simulated pod with no process behind its IP) is asked again
with a growing interval, so jobs that cannot report cost almost nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
from maas_api.contract import (
    DEFAULT_PROGRESS_PORT,
    PROGRESS_FINISHED,
    PROGRESS_PATH,
    PROGRESS_PORT_ENV,
    ProgressReport,
)
from maas_api.status import Progress
from pydantic import ValidationError

from maas_operator import names

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 60.0
"""The longest wait between two asks of a worker that did not answer."""


def progress_url(pod: Mapping[str, Any]) -> str | None:
    """Where worker 0's progress document is, if that pod runs and has an address."""
    metadata = pod.get("metadata") or {}
    worker_index = (metadata.get("labels") or {}).get(names.WORKER_INDEX_LABEL)
    if worker_index != "0" or metadata.get("deletionTimestamp"):
        return None
    status = pod.get("status") or {}
    ip = status.get("podIP")
    if status.get("phase") != "Running" or not ip:
        return None
    return f"http://{_host(str(ip))}:{_progress_port(pod)}{PROGRESS_PATH}"


def _host(ip: str) -> str:
    return f"[{ip}]" if ":" in ip else ip


def _progress_port(pod: Mapping[str, Any]) -> int:
    """The port the worker was told to serve on (a pod patch may move it), else the contract's default."""
    for container in (pod.get("spec") or {}).get("containers") or []:
        for variable in container.get("env") or []:
            value = variable.get("value")
            if variable.get("name") == PROGRESS_PORT_ENV and isinstance(value, str) and value.isdigit():
                return int(value)
    return DEFAULT_PROGRESS_PORT


def status_progress(report: ProgressReport, read_at: datetime) -> Progress:
    return Progress(
        step=report.step,
        total_steps=report.total_steps,
        loss=report.loss,
        samples_per_second=report.samples_per_second,
        last_checkpoint_step=report.last_checkpoint_step,
        finished=report.phase == PROGRESS_FINISHED,
        updated_at=read_at,
    )


def same_progress(a: Progress | None, b: Progress | None) -> bool:
    """Equal apart from when it was read: a re-read of the same step is no reason to write the status."""
    if a is None or b is None:
        return a is b
    return a.model_copy(update={"updated_at": None}) == b.model_copy(update={"updated_at": None})


@dataclass
class _Target:
    url: str
    failures: int = 0
    next_ask: float = 0.0


class ProgressPoller:
    """Asks worker 0 of every running Train job for its progress; a change is stored in `latest` and the job
    is queued for a reconcile, which copies it into the status."""

    def __init__(
        self,
        targets: Callable[[], Iterable[tuple[str, str]]],
        on_change: Callable[[str, Progress], None],
        interval_seconds: float,
        timeout_seconds: float = 2.0,
        concurrency: int = 16,
    ) -> None:
        self._targets = targets
        self._on_change = on_change
        self.interval_seconds = interval_seconds
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._limit = asyncio.Semaphore(concurrency)
        self._known: dict[str, _Target] = {}
        self.latest: dict[str, Progress] = {}

    async def run(self) -> None:
        async with aiohttp.ClientSession(timeout=self._timeout) as session:
            while True:
                await self.poll_once(session)
                await asyncio.sleep(self.interval_seconds)

    async def poll_once(self, session: aiohttp.ClientSession) -> None:
        now = time.monotonic()
        current = dict(self._targets())
        for key in set(self._known) - set(current):
            del self._known[key]
        due = []
        for key, url in current.items():
            target = self._known.get(key)
            if target is None or target.url != url:
                # A new worker 0 (first start or a restarted gang): ask it now.
                target = self._known[key] = _Target(url)
            if target.next_ask <= now:
                due.append((key, target))
        await asyncio.gather(*(self._ask(session, key, target) for key, target in due))

    def forget(self, key: str) -> None:
        self._known.pop(key, None)
        self.latest.pop(key, None)

    async def _ask(self, session: aiohttp.ClientSession, key: str, target: _Target) -> None:
        async with self._limit:
            report = await self._fetch(session, target.url)
        now = time.monotonic()
        if report is None:
            target.failures += 1
            target.next_ask = now + min(MAX_BACKOFF_SECONDS, self.interval_seconds * 2**target.failures)
            return
        target.failures = 0
        target.next_ask = now
        progress = status_progress(report, datetime.now(UTC))
        if not same_progress(progress, self.latest.get(key)):
            self.latest[key] = progress
            self._on_change(key, progress)

    async def _fetch(self, session: aiohttp.ClientSession, url: str) -> ProgressReport | None:
        try:
            async with session.get(url) as response:
                if response.status != 200:
                    return None
                return ProgressReport.model_validate_json(await response.read())
        except (aiohttp.ClientError, TimeoutError, OSError):
            return None
        except ValidationError as error:
            # A runtime of another version: say so once per ask, keep the last good reading.
            log.warning("%s answered a progress document we cannot read: %s", url, error)
            return None
