"""A work queue of job keys, as client-go's: a key is never handed to two workers at once, a key added while
it is being processed is processed again afterwards, and delayed adds keep the earliest time.

Watch events for a job, its pods and the nodes all land here, so one job is reconciled once per burst of
events, and never concurrently with itself.
"""

from __future__ import annotations

import asyncio


class WorkQueue:
    def __init__(self) -> None:
        self._ready: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()
        """Keys in `_ready` (or waiting to be put back there when their processing ends)."""
        self._processing: set[str] = set()
        self._dirty_while_processing: set[str] = set()
        self._timers: dict[str, tuple[float, asyncio.TimerHandle]] = {}

    def __len__(self) -> int:
        return len(self._queued)

    def add(self, key: str, after: float = 0.0) -> None:
        """Queue `key` now, or after `after` seconds (an earlier pending time wins)."""
        if after > 0:
            loop = asyncio.get_running_loop()
            due = loop.time() + after
            pending = self._timers.get(key)
            if pending is not None and pending[0] <= due:
                return
            if pending is not None:
                pending[1].cancel()
            self._timers[key] = (due, loop.call_at(due, self._fire, key))
            return
        if key in self._processing:
            self._dirty_while_processing.add(key)
            return
        if key not in self._queued:
            self._queued.add(key)
            self._ready.put_nowait(key)

    def _fire(self, key: str) -> None:
        self._timers.pop(key, None)
        self.add(key)

    async def get(self) -> str:
        """The next key to process; call `done(key)` when finished."""
        key = await self._ready.get()
        self._queued.discard(key)
        self._processing.add(key)
        return key

    def done(self, key: str) -> None:
        self._processing.discard(key)
        if key in self._dirty_while_processing:
            self._dirty_while_processing.discard(key)
            self.add(key)

    def forget(self, key: str) -> None:
        """Drops a pending delayed add (the job is gone)."""
        pending = self._timers.pop(key, None)
        if pending is not None:
            pending[1].cancel()
