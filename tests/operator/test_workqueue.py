"""The work queue: one key at a time per worker, re-processing of keys added meanwhile, delayed adds."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from maas_operator.workqueue import WorkQueue

SOON = 0.05
"""A delay the tests wait out."""
LATER = 30.0
"""A delay no test waits out."""
PATIENCE = 5.0
"""How long a test waits for what must happen (generous: the machine may be loaded)."""


def run(test: Callable[[WorkQueue], Awaitable[None]]) -> None:
    async def main() -> None:
        await test(WorkQueue())

    asyncio.run(main())


async def nothing_ready(queue: WorkQueue, wait: float = 0.1) -> bool:
    """True when no key is handed out within `wait` seconds."""
    try:
        key = await asyncio.wait_for(queue.get(), wait)
    except TimeoutError:
        return True
    queue.done(key)
    return False


async def next_key(queue: WorkQueue) -> str:
    return await asyncio.wait_for(queue.get(), PATIENCE)


def test_keys_come_out_in_order_and_a_queued_key_is_queued_once() -> None:
    async def test(queue: WorkQueue) -> None:
        for key in ("ns/a", "ns/b", "ns/a", "ns/c", "ns/b"):
            queue.add(key)
        assert len(queue) == 3
        assert [await next_key(queue) for _ in range(3)] == ["ns/a", "ns/b", "ns/c"]
        assert len(queue) == 0
        assert await nothing_ready(queue)

    run(test)


def test_a_key_in_process_is_never_handed_out_twice_but_processed_again_after() -> None:
    async def test(queue: WorkQueue) -> None:
        queue.add("ns/a")
        first = await next_key(queue)
        queue.add("ns/a")  # an event while the first reconcile runs
        queue.add("ns/a")
        assert len(queue) == 0
        assert await nothing_ready(queue), "a second worker must not get a key in process"
        queue.done(first)
        assert await next_key(queue) == "ns/a"
        queue.done("ns/a")
        assert await nothing_ready(queue), "two adds during one reconcile make one more, not two"

    run(test)


def test_done_without_new_events_does_not_requeue() -> None:
    async def test(queue: WorkQueue) -> None:
        queue.add("ns/a")
        queue.done(await next_key(queue))
        assert len(queue) == 0
        assert await nothing_ready(queue)

    run(test)


def test_other_keys_go_on_while_one_is_in_process() -> None:
    async def test(queue: WorkQueue) -> None:
        queue.add("ns/a")
        busy = await next_key(queue)
        queue.add("ns/a")
        queue.add("ns/b")
        assert await next_key(queue) == "ns/b"
        queue.done("ns/b")
        queue.done(busy)
        assert await next_key(queue) == "ns/a"

    run(test)


def test_a_delayed_add_arrives_after_its_delay() -> None:
    async def test(queue: WorkQueue) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        queue.add("ns/a", after=SOON)
        assert len(queue) == 0
        assert await next_key(queue) == "ns/a"
        assert loop.time() - start >= SOON

    run(test)


@pytest.mark.parametrize("delays", [(LATER, SOON), (SOON, LATER)], ids=["earlier-second", "earlier-first"])
def test_the_earliest_of_two_delayed_adds_wins(delays: tuple[float, float]) -> None:
    async def test(queue: WorkQueue) -> None:
        for delay in delays:
            queue.add("ns/a", after=delay)
        assert await next_key(queue) == "ns/a"
        queue.done("ns/a")
        assert await nothing_ready(queue, SOON * 4), "the later time is dropped, not kept as a second add"

    run(test)


def test_an_immediate_add_does_not_cancel_a_pending_delayed_one() -> None:
    async def test(queue: WorkQueue) -> None:
        queue.add("ns/a", after=SOON)
        queue.add("ns/a")
        queue.done(await next_key(queue))
        # The resync or requeue asked for later still comes.
        assert await next_key(queue) == "ns/a"

    run(test)


def test_forget_drops_a_pending_delayed_add() -> None:
    async def test(queue: WorkQueue) -> None:
        queue.add("ns/gone", after=SOON)
        queue.add("ns/kept", after=SOON)
        queue.forget("ns/gone")
        assert await next_key(queue) == "ns/kept"
        queue.done("ns/kept")
        assert await nothing_ready(queue, SOON * 4)

    run(test)


def test_a_delayed_add_of_a_queued_key_does_not_duplicate_it() -> None:
    async def test(queue: WorkQueue) -> None:
        queue.add("ns/a")
        queue.add("ns/a", after=SOON)
        await asyncio.sleep(SOON * 2)  # the timer fires while the key still waits in the queue
        assert len(queue) == 1
        queue.done(await next_key(queue))
        assert await nothing_ready(queue)

    run(test)
