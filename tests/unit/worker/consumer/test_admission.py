"""Batch rows start only into the capacity online work leaves idle."""

from __future__ import annotations

import asyncio

import pytest

from services.worker.consumer.admission import AdmissionGate, WorkerLoadReading
from services.worker.consumer.attempt_errors import WorkerUnavailable


class ScriptedLoad:
    """The worker's load as the test sets it."""

    def __init__(self, reading: WorkerLoadReading | None) -> None:
        self.reading = reading

    async def load(self) -> WorkerLoadReading | None:
        return self.reading


async def gate_with(reading: WorkerLoadReading | None, **options: object) -> tuple[AdmissionGate, ScriptedLoad]:
    source = ScriptedLoad(reading)
    gate = AdmissionGate(
        source,
        max_inflight=options.pop("max_inflight", 100),  # type: ignore[arg-type]
        reserve_fraction=options.pop("reserve_fraction", 0.0),  # type: ignore[arg-type]
        poll_s=options.pop("poll_s", 3600),  # type: ignore[arg-type]
        **options,  # type: ignore[arg-type]
    )
    await gate.start()
    return gate, source


@pytest.mark.parametrize(
    ("online", "reserve", "queue_ahead", "allowed"),
    [
        (0, 0.0, 0, 8),  # idle: fill it
        (0, 0.25, 0, 6),  # leave a quarter for online work
        (3, 0.0, 0, 5),  # three online requests
        (10, 0.0, 4, 0),  # online work fills it and waits: nothing new, queue_ahead or not
        (0, 0.0, 4, 12),  # a few more may wait in the engine's queue
    ],
)
async def test_room_is_capacity_minus_online_work(online: int, reserve: float, queue_ahead: int, allowed: int) -> None:
    gate, _ = await gate_with(
        WorkerLoadReading(running=min(8, online), waiting=max(0, online - 8), capacity=8, online=online),
        reserve_fraction=reserve,
        queue_ahead=queue_ahead,
    )
    assert gate.allowed() == allowed
    await gate.close()


async def test_the_consumers_own_rows_are_not_online_work() -> None:
    gate, source = await gate_with(WorkerLoadReading(running=0, waiting=0, capacity=4))
    async with gate.slot(), gate.slot():
        # The engine runs our two rows, and nothing else.
        source.reading = WorkerLoadReading(running=2, waiting=0, capacity=4, online=0)
        await gate._read()
        assert gate.allowed() == 4
    await gate.close()


async def test_while_online_work_is_around_batch_rows_keep_to_their_share() -> None:
    busy = WorkerLoadReading(running=1, waiting=0, capacity=8, online=1)
    gate, source = await gate_with(busy, share_while_online=0.5)
    assert gate.allowed() == 4
    # Alone again: the cap lingers a little (online traffic comes in bursts).
    source.reading = WorkerLoadReading(running=0, waiting=0, capacity=8)
    await gate._read()
    assert gate.allowed() == 4
    await gate.close()
    lingering, _ = await gate_with(WorkerLoadReading(1, 0, 8, online=1), share_while_online=0.5, online_linger_s=0.0)
    lingering._reading = WorkerLoadReading(0, 0, 8)
    assert lingering.allowed() == 8
    await lingering.close()


async def test_a_hard_cap_bounds_rows_in_flight() -> None:
    gate, _ = await gate_with(WorkerLoadReading(0, 0, 64), max_inflight=3)
    assert gate.allowed() == 3
    await gate.close()


async def test_waiting_rows_get_in_first_come_first_served_as_rows_end() -> None:
    gate, _ = await gate_with(WorkerLoadReading(0, 0, 2))
    order: list[int] = []
    release = asyncio.Event()

    async def row(number: int) -> None:
        async with gate.slot():
            order.append(number)
            await release.wait()

    tasks = [asyncio.create_task(row(i)) for i in range(5)]
    await asyncio.sleep(0.05)
    assert order == [0, 1] and gate.inflight == 2 and gate.waiting == 3
    release.set()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4] and gate.inflight == 0
    await gate.close()


async def test_online_work_arriving_stops_new_rows_until_there_is_room() -> None:
    gate, source = await gate_with(WorkerLoadReading(0, 0, 2))
    entered = asyncio.Event()
    async with gate.slot():
        source.reading = WorkerLoadReading(running=2, waiting=1, capacity=2, online=2)
        await gate._read()

        async def another() -> None:
            async with gate.slot():
                entered.set()

        waiting_row = asyncio.create_task(another())
        await asyncio.sleep(0.05)
        assert not entered.is_set()
        # One online request finished.
        source.reading = WorkerLoadReading(running=1, waiting=0, capacity=2, online=0)
        await gate._read()
        await asyncio.wait_for(waiting_row, timeout=1)
    assert entered.is_set()
    await gate.close()


async def test_a_cancelled_waiter_gives_its_place_to_the_next() -> None:
    gate, _ = await gate_with(WorkerLoadReading(0, 0, 1))
    got_in: list[str] = []
    async with gate.slot():

        async def row(name: str) -> None:
            async with gate.slot():
                got_in.append(name)

        first, second = asyncio.create_task(row("first")), asyncio.create_task(row("second"))
        await asyncio.sleep(0.05)
        first.cancel()
        await asyncio.sleep(0.01)
    await asyncio.wait_for(second, timeout=1)
    assert got_in == ["second"] and gate.inflight == 0
    await gate.close()


async def test_a_worker_that_stops_answering_fails_the_wait() -> None:
    gate, _ = await gate_with(None, down_after_s=0.0)
    with pytest.raises(WorkerUnavailable):
        async with gate.slot():
            pass
    assert gate.inflight == 0
    await gate.close()


async def test_an_idle_gate_does_not_poll_its_worker() -> None:
    class CountingLoad(ScriptedLoad):
        calls = 0

        async def load(self) -> WorkerLoadReading | None:
            self.calls += 1
            return await super().load()

    source = CountingLoad(WorkerLoadReading(0, 0, 8))
    gate = AdmissionGate(source, max_inflight=8, reserve_fraction=0.0, poll_s=0.01)
    await gate.start()
    await asyncio.sleep(0.1)
    idle_calls = source.calls
    assert idle_calls <= 2
    async with gate.slot():
        await asyncio.sleep(0.1)
    # While a row ran, it read the load every poll interval.
    assert source.calls > idle_calls + 3
    await gate.close()
