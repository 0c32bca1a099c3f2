"""The bounded relay between a flow's stream and a client's writes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from headrace.runtime.errors import Internal, NotFound
from services.router.gateway.streaming import ClientGone, RelayLimits, StreamEnd, relay


class CountingSource:
    """An endless stream that counts how often it was pulled and whether it was closed."""

    def __init__(self, fail_after: int | None = None, error: Exception | None = None) -> None:
        self.pulled = 0
        self.closed = False
        self._fail_after = fail_after
        self._error = error or NotFound("gone")

    async def stream(self) -> AsyncIterator[int]:
        try:
            while True:
                if self._fail_after is not None and self.pulled >= self._fail_after:
                    raise self._error
                self.pulled += 1
                yield self.pulled
                await asyncio.sleep(0)
        finally:
            self.closed = True


async def never() -> None:
    await asyncio.Event().wait()


async def finite(count: int) -> AsyncIterator[int]:
    for item in range(count):
        yield item


async def test_every_item_is_written_in_order() -> None:
    written: list[int] = []

    async def write(item: int) -> None:
        written.append(item)

    result = await relay(finite(100), write, limits=RelayLimits(buffer=4, stall_timeout_s=5), stop=never)
    assert result.end is StreamEnd.COMPLETED
    assert written == list(range(100))


async def test_a_blocked_reader_pauses_the_pull_then_is_cut_off() -> None:
    source = CountingSource()
    blocked = asyncio.Event()
    started_writes = 0

    async def write(item: int) -> None:
        nonlocal started_writes
        started_writes += 1
        if started_writes > 3:
            await blocked.wait()  # the client stops reading

    task = asyncio.create_task(
        relay(source.stream(), write, limits=RelayLimits(buffer=5, stall_timeout_s=0.3), stop=never)
    )
    await asyncio.sleep(0.15)
    # 3 written, 1 stuck in its write, 5 in the buffer, 1 waiting to get in.
    assert source.pulled <= 3 + 1 + 5 + 1
    pulled = source.pulled
    await asyncio.sleep(0.05)
    assert source.pulled == pulled  # paused, not pulling
    result = await task
    assert result.end is StreamEnd.STALLED
    assert source.closed


async def test_the_stall_timeout_bounds_each_write_not_the_whole_stream() -> None:
    written: list[int] = []

    async def write(item: int) -> None:
        await asyncio.sleep(0.05)  # slow, but never stalled for 0.12 s
        written.append(item)

    result = await relay(finite(6), write, limits=RelayLimits(buffer=2, stall_timeout_s=0.12), stop=never)
    assert result.end is StreamEnd.COMPLETED
    assert written == list(range(6))


async def test_a_stalled_write_is_cut_off_after_the_stall_timeout() -> None:
    async def write(item: int) -> None:
        if item == 3:
            await asyncio.Event().wait()

    loop = asyncio.get_running_loop()
    started = loop.time()
    result = await relay(finite(10), write, limits=RelayLimits(buffer=2, stall_timeout_s=0.2), stop=never)
    assert result.end is StreamEnd.STALLED
    assert 0.2 <= loop.time() - started < 1.0


async def test_a_failing_stream_reports_its_error_after_what_it_produced() -> None:
    source = CountingSource(fail_after=3)
    written: list[int] = []

    async def write(item: int) -> None:
        written.append(item)

    result = await relay(source.stream(), write, limits=RelayLimits(buffer=8, stall_timeout_s=5), stop=never)
    assert result.end is StreamEnd.FAILED and isinstance(result.error, NotFound)
    assert written == [1, 2, 3]


async def test_an_unexpected_failure_becomes_an_internal_error() -> None:
    source = CountingSource(fail_after=1, error=ValueError("bug"))

    async def write(item: int) -> None:
        pass

    result = await relay(source.stream(), write, limits=RelayLimits(buffer=2, stall_timeout_s=5), stop=never)
    assert result.end is StreamEnd.FAILED
    assert isinstance(result.error, Internal) and "internal error" in result.error.message


async def test_stop_ends_the_relay_and_closes_the_stream() -> None:
    source = CountingSource()
    left = asyncio.Event()

    async def write(item: int) -> None:
        if item == 10:
            left.set()
        await asyncio.sleep(0)

    async def client_left() -> None:
        await left.wait()

    result = await relay(source.stream(), write, limits=RelayLimits(buffer=2, stall_timeout_s=5), stop=client_left)
    assert result.end is StreamEnd.DISCONNECTED
    assert source.closed


async def test_a_write_to_a_gone_client_ends_the_relay() -> None:
    source = CountingSource()

    async def write(item: int) -> None:
        if item == 2:
            raise ClientGone

    result = await relay(source.stream(), write, limits=RelayLimits(buffer=2, stall_timeout_s=5), stop=never)
    assert result.end is StreamEnd.DISCONNECTED
    assert source.closed
