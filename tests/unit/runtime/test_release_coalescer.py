"""Lease releases coalesced while one is in flight (release_coalescer.py),
against a fake scheduler stub whose calls end when the test says."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import grpc.aio
import pytest

from headrace.runtime.release_coalescer import ReleaseCoalescer
from headrace.v1 import scheduler_pb2


class FakeStub:
    """Release and ReleaseMany that wait for `gate` and record what they got."""

    def __init__(self, *, many_fails: grpc.StatusCode | None = None) -> None:
        self.gate = asyncio.Event()
        self.calls: list[tuple[str, list[str], dict[str, Any]]] = []
        self.many_fails = many_fails

    async def Release(self, request: scheduler_pb2.ReleaseRequest, **options: Any) -> scheduler_pb2.ReleaseResponse:
        self.calls.append(("Release", [request.lease_id], options))
        await self.gate.wait()
        return scheduler_pb2.ReleaseResponse(released=not request.lease_id.startswith("gone"))

    async def ReleaseMany(
        self, request: scheduler_pb2.ReleaseManyRequest, **options: Any
    ) -> scheduler_pb2.ReleaseManyResponse:
        self.calls.append(("ReleaseMany", [r.lease_id for r in request.releases], options))
        await self.gate.wait()
        if self.many_fails is not None:
            raise grpc.aio.AioRpcError(
                self.many_fails, grpc.aio.Metadata(), grpc.aio.Metadata(), details="Method not found!"
            )
        return scheduler_pb2.ReleaseManyResponse(
            results=[
                scheduler_pb2.ReleaseResponse(released=not r.lease_id.startswith("gone")) for r in request.releases
            ]
        )


def release(lease_id: str) -> scheduler_pb2.ReleaseRequest:
    return scheduler_pb2.ReleaseRequest(lease_id=lease_id)


async def started(coalescer: ReleaseCoalescer, *lease_ids: str) -> list[asyncio.Task[scheduler_pb2.ReleaseResponse]]:
    tasks = []
    for lease_id in lease_ids:
        tasks.append(asyncio.create_task(coalescer.release(release(lease_id))))
        await asyncio.sleep(0)  # each reaches its call, or the waiting list, in this order
    return tasks


async def test_a_release_alone_goes_at_once_with_its_own_call_options() -> None:
    stub = FakeStub()
    stub.gate.set()
    coalescer = ReleaseCoalescer(stub)  # type: ignore[arg-type]
    answer = await coalescer.release(release("a"), timeout=5.0, metadata=(("x-request-id", "r1"),))
    assert answer.released
    assert stub.calls == [("Release", ["a"], {"timeout": 5.0, "metadata": (("x-request-id", "r1"),)})]


async def test_releases_that_end_while_one_is_in_flight_go_together_each_with_its_answer() -> None:
    stub = FakeStub()
    coalescer = ReleaseCoalescer(stub)  # type: ignore[arg-type]
    tasks = await started(coalescer, "a", "b", "gone-c", "d")
    assert [name for name, _, _ in stub.calls] == ["Release"]  # b, c, d wait for a's call
    stub.gate.set()
    answers = await asyncio.gather(*tasks)
    assert [name for name, ids, _ in stub.calls] == ["Release", "ReleaseMany"]
    assert stub.calls[1][1] == ["b", "gone-c", "d"]
    assert [a.released for a in answers] == [True, True, False, True]
    assert (coalescer.single_calls, coalescer.many_calls) == (1, 1)
    # Idle again: the next one goes alone.
    await coalescer.release(release("e"))
    assert stub.calls[-1][:2] == ("Release", ["e"])


async def test_a_batch_is_capped_and_the_rest_follow() -> None:
    stub = FakeStub()
    coalescer = ReleaseCoalescer(stub, max_per_call=2)  # type: ignore[arg-type]
    tasks = await started(coalescer, "a", "b", "c", "d", "e")
    stub.gate.set()
    await asyncio.gather(*tasks)
    assert [ids for _, ids, _ in stub.calls] == [["a"], ["b", "c"], ["d", "e"]]


async def test_a_failed_batch_fails_every_release_in_it() -> None:
    stub = FakeStub(many_fails=grpc.StatusCode.UNAVAILABLE)
    coalescer = ReleaseCoalescer(stub)  # type: ignore[arg-type]
    first, *rest = await started(coalescer, "a", "b", "c")
    stub.gate.set()
    assert (await first).released
    for task in rest:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await task
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_an_older_scheduler_without_release_many_gets_them_one_by_one() -> None:
    stub = FakeStub(many_fails=grpc.StatusCode.UNIMPLEMENTED)
    coalescer = ReleaseCoalescer(stub)  # type: ignore[arg-type]
    tasks = await started(coalescer, "a", "b", "c")
    stub.gate.set()
    assert all(a.released for a in await asyncio.gather(*tasks))
    assert [name for name, _, _ in stub.calls] == ["Release", "ReleaseMany", "Release", "Release"]
    stub.gate.clear()
    tasks = await started(coalescer, "d", "e", "f")
    stub.gate.set()
    await asyncio.gather(*tasks)
    assert [name for name, _, _ in stub.calls[4:]] == ["Release"] * 3  # no ReleaseMany asked again


async def test_a_caller_that_stops_waiting_still_has_its_lease_released() -> None:
    stub = FakeStub()
    coalescer = ReleaseCoalescer(stub)  # type: ignore[arg-type]
    first, second = await started(coalescer, "a", "b")
    second.cancel()
    stub.gate.set()
    await first
    with pytest.raises(asyncio.CancelledError):
        await second
    for _ in range(5):
        await asyncio.sleep(0)
    assert [ids for _, ids, _ in stub.calls] == [["a"], ["b"]]


async def test_an_older_scheduler_gets_its_releases_side_by_side_not_one_at_a_time() -> None:
    # Without ReleaseMany there is nothing to gain by waiting for the call in
    # flight: held back, every release to that replica would queue behind
    # the one before (one call at a time: at 2 ms a call, 500 releases/s,
    # and a backlog whose leases expire instead under more load).
    stub = FakeStub(many_fails=grpc.StatusCode.UNIMPLEMENTED)
    coalescer = ReleaseCoalescer(stub)  # type: ignore[arg-type]
    tasks = await started(coalescer, "a", "b", "c")
    stub.gate.set()
    await asyncio.gather(*tasks)
    stub.gate.clear()
    tasks = await started(coalescer, "d", "e", "f")
    # All three in flight at once, before any has answered.
    assert [ids for _, ids, _ in stub.calls[4:]] == [["d"], ["e"], ["f"]]
    stub.gate.set()
    assert all(a.released for a in await asyncio.gather(*tasks))


class NoReleaseMany(FakeStub):
    """An older scheduler: ReleaseMany answers UNIMPLEMENTED at once."""

    async def ReleaseMany(
        self, request: scheduler_pb2.ReleaseManyRequest, **options: Any
    ) -> scheduler_pb2.ReleaseManyResponse:
        self.calls.append(("ReleaseMany", [r.lease_id for r in request.releases], options))
        raise grpc.aio.AioRpcError(
            grpc.StatusCode.UNIMPLEMENTED, grpc.aio.Metadata(), grpc.aio.Metadata(), details="Method not found!"
        )


async def test_releases_waiting_when_release_many_turns_out_missing_go_side_by_side() -> None:
    stub = NoReleaseMany()
    coalescer = ReleaseCoalescer(stub)  # type: ignore[arg-type]
    tasks = await started(coalescer, "a", "b", "c", "d")
    # a's call answers; the calls after it wait until the gate opens again.
    stub.gate.set()
    stub.gate.clear()
    for _ in range(10):
        await asyncio.sleep(0)
    # b, c and d were refused as a ReleaseMany, then went as three calls at once.
    assert [ids for _, ids, _ in stub.calls] == [["a"], ["b", "c", "d"], ["b"], ["c"], ["d"]]
    stub.gate.set()
    assert all(a.released for a in await asyncio.gather(*tasks))


async def test_with_a_window_releases_that_end_within_it_share_the_first_ones_call() -> None:
    """A batch consumer's rows: nobody waits on their releases, so the first
    waits `window_s` for others instead of going alone."""
    stub = FakeStub()
    stub.gate.set()
    coalescer = ReleaseCoalescer(stub)  # type: ignore[arg-type]
    coalescer.window_s = lambda: 0.05
    first = asyncio.create_task(coalescer.release(release("a")))
    await asyncio.sleep(0.01)
    assert stub.calls == []  # still in its window
    rest = [asyncio.create_task(coalescer.release(release(lease_id))) for lease_id in ("b", "gone-c")]
    answers = await asyncio.gather(first, *rest)
    assert [(name, ids) for name, ids, _ in stub.calls] == [("ReleaseMany", ["a", "b", "gone-c"])]
    assert [a.released for a in answers] == [True, True, False]
    # Alone in its window: one Release.
    assert (await coalescer.release(release("d"))).released
    assert stub.calls[-1][:2] == ("Release", ["d"])


async def test_flush_sends_what_waits_in_a_window_at_once() -> None:
    """A consumer stopping gives its rows' leases back now, not after the
    window (its loop may stop before the window ends)."""
    stub = FakeStub()
    stub.gate.set()
    coalescer = ReleaseCoalescer(stub)  # type: ignore[arg-type]
    coalescer.window_s = lambda: 60.0
    waiting = [asyncio.create_task(coalescer.release(release(lease_id))) for lease_id in ("a", "b")]
    await asyncio.sleep(0.01)
    assert stub.calls == []
    await asyncio.wait_for(coalescer.flush(), timeout=1.0)
    assert [(name, ids) for name, ids, _ in stub.calls] == [("ReleaseMany", ["a", "b"])]
    assert all(task.done() and task.result().released for task in waiting)
    # No window after a flush: the next goes at once.
    await asyncio.wait_for(coalescer.release(release("c")), timeout=1.0)
