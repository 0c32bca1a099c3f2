"""The dynamic batcher: coalescing, its two triggers (size, delay), order,
errors reaching every caller of a batch, and its bounds."""

from __future__ import annotations

import asyncio
import time

import pytest

from headrace.runtime.errors import Internal, InvalidArgument, QueueFull, Unavailable
from services.worker.engines.dynamic_batcher import DynamicBatcher


class Model:
    """A stand-in model call that records the batches it gets."""

    def __init__(self, *, fail_on: str | None = None, gate: asyncio.Event | None = None) -> None:
        self.batches: list[list[str]] = []
        self.fail_on = fail_on
        self.gate = gate

    async def __call__(self, items: list[str]) -> list[str]:
        self.batches.append(list(items))
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_on is not None and self.fail_on in items:
            raise RuntimeError(f"model cannot take {self.fail_on!r}")
        return [item.upper() for item in items]


def batcher(model: Model, *, size: int = 8, delay_s: float = 0.05, queue: int = 64) -> DynamicBatcher[str, str]:
    return DynamicBatcher(model, max_batch_size=size, max_queue_delay_s=delay_s, max_queue_size=queue)


async def test_concurrent_calls_coalesce_into_one_model_call() -> None:
    model = Model()
    b = batcher(model, size=16, delay_s=0.05)
    results = await asyncio.gather(*(b.submit([f"t{i}"]) for i in range(10)))
    assert results == [[f"T{i}"] for i in range(10)]
    assert model.batches == [[f"t{i}" for i in range(10)]]
    stats = b.stats()
    assert (stats.calls, stats.batches, stats.items, stats.largest_batch) == (10, 1, 10, 10)
    await b.close()


async def test_batches_never_exceed_max_batch_size() -> None:
    model = Model()
    b = batcher(model, size=8, delay_s=0.05)
    results = await asyncio.gather(*(b.submit([f"t{i}"]) for i in range(20)))
    assert [r[0] for r in results] == [f"T{i}" for i in range(20)]
    assert [len(batch) for batch in model.batches] == [8, 8, 4]
    await b.close()


async def test_a_full_batch_leaves_without_waiting_for_the_delay() -> None:
    model = Model()
    b = batcher(model, size=4, delay_s=5.0)
    started = time.monotonic()
    await asyncio.gather(*(b.submit([f"t{i}"]) for i in range(4)))
    assert time.monotonic() - started < 1.0
    await b.close()


async def test_a_lone_item_waits_the_max_delay_then_goes_alone() -> None:
    model = Model()
    b = batcher(model, size=8, delay_s=0.2)
    started = time.monotonic()
    assert await b.submit(["alone"]) == ["ALONE"]
    elapsed = time.monotonic() - started
    assert 0.2 <= elapsed < 1.5
    assert model.batches == [["alone"]]
    await b.close()


async def test_after_a_lone_batch_a_lone_caller_does_not_wait_for_company() -> None:
    model = Model()
    b = batcher(model, size=8, delay_s=0.3)
    assert await b.submit(["first"]) == ["FIRST"]
    # A caller one at a time: its next item leaves at once, without the
    # one arriving a moment later (within the delay it would have waited).
    alone = asyncio.create_task(b.submit(["second"]))
    await asyncio.sleep(0.05)
    late = asyncio.create_task(b.submit(["third"]))
    assert await alone == ["SECOND"] and await late == ["THIRD"]
    assert model.batches == [["first"], ["second"], ["third"]]
    await b.close()


async def test_late_arrivals_within_the_delay_join_the_batch() -> None:
    model = Model()
    b = batcher(model, size=8, delay_s=0.3)
    first = asyncio.create_task(b.submit(["early"]))
    await asyncio.sleep(0.05)
    second = asyncio.create_task(b.submit(["late"]))
    assert await first == ["EARLY"] and await second == ["LATE"]
    assert model.batches == [["early", "late"]]
    await b.close()


async def test_zero_delay_takes_what_is_queued() -> None:
    model = Model()
    b = batcher(model, size=8, delay_s=0.0)
    assert await b.submit(["x", "y"]) == ["X", "Y"]
    assert model.batches == [["x", "y"]]
    await b.close()


async def test_each_call_gets_its_own_results_in_order_across_split_batches() -> None:
    model = Model()
    b = batcher(model, size=3, delay_s=0.02)
    calls = [[f"c{c}-{i}" for i in range(n)] for c, n in enumerate((5, 1, 4, 2))]
    results = await asyncio.gather(*(b.submit(items) for items in calls))
    assert results == [[item.upper() for item in items] for items in calls]
    assert all(len(batch) <= 3 for batch in model.batches)
    # Items go through in arrival order.
    assert [item for batch in model.batches for item in batch] == [item for items in calls for item in items]
    await b.close()


async def test_a_failed_batch_fails_every_caller_in_it_and_only_those() -> None:
    gate = asyncio.Event()
    model = Model(fail_on="bad", gate=gate)
    b = batcher(model, size=3, delay_s=0.01)
    calls = [asyncio.create_task(b.submit([item])) for item in ("a", "bad", "c", "d")]
    await asyncio.sleep(0.05)
    gate.set()
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert model.batches == [["a", "bad", "c"], ["d"]]
    for outcome in outcomes[:3]:
        assert isinstance(outcome, Internal)
        assert "cannot take 'bad'" in str(outcome)
    assert outcomes[3] == ["D"]
    # The batcher keeps serving after a failure.
    assert await b.submit(["e"]) == ["E"]
    await b.close()


async def test_a_model_that_returns_the_wrong_count_is_an_error() -> None:
    async def short(items: list[str]) -> list[str]:
        return items[:-1]

    b: DynamicBatcher[str, str] = DynamicBatcher(short, max_batch_size=4, max_queue_delay_s=0.0, max_queue_size=8)
    with pytest.raises(Internal, match="returned 1 results for 2 inputs"):
        await b.submit(["a", "b"])
    await b.close()


async def test_the_queue_is_bounded() -> None:
    gate = asyncio.Event()
    model = Model(gate=gate)
    b = batcher(model, size=2, delay_s=0.0, queue=4)
    running = asyncio.create_task(b.submit(["r1", "r2"]))
    await asyncio.sleep(0.05)  # that batch is in the model, blocked on the gate
    queued = asyncio.create_task(b.submit(["q1", "q2", "q3"]))
    await asyncio.sleep(0)
    assert b.stats().queued == 3
    with pytest.raises(QueueFull) as full:
        await b.submit(["q4", "q5"])
    assert full.value.retry_after_s is not None and full.value.retry_after_s > 0
    assert await asyncio.wait_for(b.submit([]), 1) == []
    with pytest.raises(InvalidArgument, match="exceed the queue bound"):
        await b.submit([f"x{i}" for i in range(5)])
    gate.set()
    assert await running == ["R1", "R2"]
    assert await queued == ["Q1", "Q2", "Q3"]
    await b.close()


async def test_a_cancelled_caller_leaves_its_items_behind() -> None:
    gate = asyncio.Event()
    model = Model(gate=gate)
    b = batcher(model, size=2, delay_s=0.0)
    first = asyncio.create_task(b.submit(["a", "b"]))
    await asyncio.sleep(0.05)
    gone = asyncio.create_task(b.submit(["gone1", "gone2"]))
    stays = asyncio.create_task(b.submit(["stays"]))
    await asyncio.sleep(0)
    gone.cancel()
    gate.set()
    assert await first == ["A", "B"]
    assert await stays == ["STAYS"]
    assert gone.cancelled()
    assert ["gone1", "gone2"] not in model.batches
    assert all("gone1" not in batch for batch in model.batches)
    await b.close()


async def test_close_fails_waiting_callers_and_refuses_new_ones() -> None:
    gate = asyncio.Event()
    model = Model(gate=gate)
    b = batcher(model, size=1, delay_s=0.0)
    running = asyncio.create_task(b.submit(["a"]))
    waiting = asyncio.create_task(b.submit(["b"]))
    await asyncio.sleep(0.05)
    await b.close()
    for task in (running, waiting):
        with pytest.raises(Unavailable):
            await task
    with pytest.raises(Unavailable, match="closed"):
        await b.submit(["c"])


def test_rejects_nonsense_bounds() -> None:
    with pytest.raises(ValueError):
        DynamicBatcher(Model(), max_batch_size=0, max_queue_delay_s=0.0, max_queue_size=1)
    with pytest.raises(ValueError):
        DynamicBatcher(Model(), max_batch_size=1, max_queue_delay_s=-1.0, max_queue_size=1)
