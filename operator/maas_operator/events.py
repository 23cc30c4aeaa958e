"""The operator's events on its jobs, posted off the reconcile path.

A reconcile hands its events over and goes on with its next job: an event is a record for `kubectl describe`,
and waiting for its POST held a reconcile worker for a round trip per event (two or three per new job) while
other jobs waited for their pods. Up to `concurrency` posts are in flight at once. The same event of the same
job handed over again before it went out is posted once with its count, as client-go's recorder aggregates
repeats (a create that keeps being refused says so once, counted, not once per retry).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from kubernetes_asyncio.client.exceptions import ApiException

from maas_operator.children import JobRef
from maas_operator.reconcile import Event

log = logging.getLogger(__name__)

Post = Callable[[JobRef, Event, int], Awaitable[None]]
"""Posts one event with its count (Kube.post_event)."""
EventKey = tuple[str, str, str, str, str]
"""(job key, job uid, type, reason, message): events with equal keys are one event, counted."""


class EventPoster:
    def __init__(self, post: Post, concurrency: int = 2) -> None:
        self._post = post
        self._concurrency = concurrency
        self._pending: dict[EventKey, tuple[JobRef, Event, int]] = {}
        """Events waiting to go out, oldest first, with how often each was handed over."""
        self._drain: asyncio.Task[None] | None = None
        self.posted = 0
        self.aggregated = 0
        """Events that went out as a count on an equal pending one instead of a POST of their own."""

    def __len__(self) -> int:
        return len(self._pending)

    def post(self, job: JobRef, event: Event) -> None:
        """Queues an event; never waits. Must be called from the event loop's thread."""
        key = (job.key, job.uid, event.type, event.reason, event.message)
        queued = self._pending.get(key)
        if queued is not None:
            self._pending[key] = (queued[0], queued[1], queued[2] + 1)
            self.aggregated += 1
        else:
            self._pending[key] = (job, event, 1)
        if self._drain is None or self._drain.done():
            self._drain = asyncio.get_running_loop().create_task(self._run(), name="events")

    async def _run(self) -> None:
        while self._pending:
            batch = []
            for key in list(self._pending)[: self._concurrency]:
                batch.append(self._pending.pop(key))
            await asyncio.gather(*(self._send(job, event, count) for job, event, count in batch))

    async def _send(self, job: JobRef, event: Event, count: int) -> None:
        try:
            await self._post(job, event, count)
            self.posted += 1
        except ApiException as error:
            log.warning("%s: event %s not posted: %s", job.key, event.reason, error.reason)
        except (OSError, TimeoutError) as error:
            log.warning("%s: event %s not posted: %r", job.key, event.reason, error)

    async def flush(self, timeout: float | None = None) -> bool:
        """Waits until every queued event went out (or `timeout` passed); True when none is left."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while (drain := self._drain) is not None and not drain.done():
            left = None if deadline is None else deadline - loop.time()
            try:
                await asyncio.wait_for(asyncio.shield(drain), left)
            except TimeoutError:
                return False
        return not self._pending

    async def close(self, timeout: float = 5.0) -> None:
        """Posts what is queued within `timeout` (an operator stopping says its last words), then stops."""
        if not await self.flush(timeout) and self._pending:
            log.warning("%d event(s) not posted before the operator stopped", len(self._pending))
        if self._drain is not None and not self._drain.done():
            self._drain.cancel()
            await asyncio.gather(self._drain, return_exceptions=True)
