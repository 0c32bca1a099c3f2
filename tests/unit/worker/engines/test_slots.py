"""Slots: a bound on an engine's requests, handed out in priority order."""

from __future__ import annotations

import asyncio

from services.worker.engines.base import Priority
from services.worker.engines.slots import Slots


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_waiting_requests_get_places_in_priority_order() -> None:
    slots = Slots(1)
    order: list[str] = []
    release = asyncio.Event()

    async def hold(name: str, priority: Priority) -> None:
        async with slots.at(priority):
            order.append(name)
            await release.wait()

    first = asyncio.create_task(hold("first batch", Priority.BATCH))
    await settle()
    waiting = [
        asyncio.create_task(hold(name, priority))
        for name, priority in (
            ("batch", Priority.BATCH),
            ("standard", Priority.STANDARD),
            ("online", Priority.INTERACTIVE),
        )
    ]
    await settle()
    assert (slots.running, slots.waiting) == (1, 3)
    release.set()
    await asyncio.wait_for(asyncio.gather(first, *waiting), 1.0)
    assert order == ["first batch", "online", "standard", "batch"]
    assert (slots.running, slots.waiting) == (0, 0)


async def test_a_waiter_that_leaves_loses_its_turn_and_nothing_else() -> None:
    slots = Slots(1)
    await slots.__aenter__()
    leaving = asyncio.create_task(slots.__aenter__())
    staying = asyncio.create_task(slots.__aenter__())
    await settle()
    leaving.cancel()
    await settle()
    await slots.__aexit__(None, None, None)
    await asyncio.wait_for(staying, 1.0)
    assert (slots.running, slots.waiting) == (1, 0)
    # A free place is taken at once.
    await slots.__aexit__(None, None, None)
    async with slots.at(Priority.BATCH):
        assert slots.running == 1
