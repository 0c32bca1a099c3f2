"""until_stopped: the work runs in the caller's task, a stop cancels it."""

from __future__ import annotations

import asyncio

import pytest

from headrace.runtime.errors import Cancelled
from services.router.gateway.answers import until_stopped


async def test_the_work_runs_in_the_callers_task_and_its_result_comes_back() -> None:
    caller = asyncio.current_task()
    ran_in: list[asyncio.Task[object] | None] = []

    async def work() -> str:
        ran_in.append(asyncio.current_task())
        await asyncio.sleep(0)
        return "answer"

    never = asyncio.get_running_loop().create_future()
    assert await until_stopped(work(), never, reason="gone") == "answer"
    assert ran_in == [caller]
    # Nothing left pending: the watcher is gone, and the task is not cancelling.
    await asyncio.sleep(0)
    assert caller is not None and caller.cancelling() == 0


async def test_a_stop_cancels_the_work_before_cancelled_is_raised() -> None:
    stop = asyncio.get_running_loop().create_future()
    unwound = asyncio.Event()

    async def work() -> str:
        try:
            await asyncio.sleep(30)
        finally:
            unwound.set()
        return "never"

    asyncio.get_running_loop().call_later(0.01, stop.set_result, None)
    with pytest.raises(Cancelled, match="the client disconnected"):
        await until_stopped(work(), stop, reason="the client disconnected")
    # The work had unwound (its worker call cancelled) by then.
    assert unwound.is_set()
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    # And the task goes on normally: a later await is not cancelled.
    await asyncio.sleep(0.01)


async def test_a_stop_that_fails_stops_the_work_too() -> None:
    async def broken_stop() -> None:
        await asyncio.sleep(0.01)
        raise ConnectionResetError("the connection broke")

    with pytest.raises(Cancelled):
        await until_stopped(asyncio.sleep(30), broken_stop(), reason="gone")


async def test_a_cancel_from_outside_stays_a_cancel() -> None:
    never = asyncio.get_running_loop().create_future()
    task = asyncio.ensure_future(until_stopped(asyncio.sleep(30), never, reason="gone"))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The watcher went with it (its cancel reached the stop it awaited).
    await asyncio.sleep(0)
    assert never.cancelled()


async def test_an_error_of_the_work_reaches_the_caller() -> None:
    async def work() -> None:
        raise ValueError("bad")

    never = asyncio.get_running_loop().create_future()
    with pytest.raises(ValueError, match="bad"):
        await until_stopped(work(), never, reason="gone")


async def test_a_work_that_turns_the_cancel_into_its_own_error_leaves_the_task_not_cancelling() -> None:
    stop = asyncio.get_running_loop().create_future()

    async def work() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            raise Cancelled("the flow's own words") from None

    asyncio.get_running_loop().call_later(0.01, stop.set_result, None)
    with pytest.raises(Cancelled, match="the flow's own words"):
        await until_stopped(work(), stop, reason="gone")
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    # A timeout scope later in the same task still tells its own expiry.
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await asyncio.sleep(1)


async def test_work_done_before_the_watcher_starts_leaves_no_coroutine_unawaited() -> None:
    import gc
    import warnings

    async def instant() -> str:
        return "at once"

    async def client_left() -> None:
        await asyncio.sleep(30)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert await until_stopped(instant(), client_left(), reason="gone") == "at once"
        await asyncio.sleep(0)
        gc.collect()
    assert not [w for w in caught if "never awaited" in str(w.message)]
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
