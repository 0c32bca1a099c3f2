"""Lease releases to one scheduler replica, coalesced.

Every request and every batch row gives its lease back, and a unary gRPC
call costs a few hundred microseconds of CPU on each side, whatever it
carries: under load that is a good part of what the scheduler does per
request. So a release goes out at once when none is in flight (nothing
waits, and it keeps its own call options and trace), and the releases that
end while a call is in flight wait for it and then go together in one
ReleaseMany (group commit: no timer, no added wait beyond the call in
flight). A coalesced release is not on its request's trace.

A scheduler without ReleaseMany (an older replica during an upgrade)
answers UNIMPLEMENTED: the waiting releases then go one by one, and so do
later ones, side by side as before coalescing (held behind the call in
flight, they would go one at a time: a replica's releases capped at one
per round trip).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable
from typing import Any

import grpc
import grpc.aio

from headrace.runtime.future_outcomes import fail, read_outcome, settle
from headrace.v1 import scheduler_pb2, scheduler_pb2_grpc

log = logging.getLogger(__name__)

# Leases per ReleaseMany (the scheduler takes up to 1,024).
MAX_PER_CALL = 256
# Per coalesced call: the leases expire on their own if it fails.
CALL_TIMEOUT_S = 5.0

_Waiting = tuple[scheduler_pb2.ReleaseRequest, "asyncio.Future[scheduler_pb2.ReleaseResponse]"]


class ReleaseCoalescer:
    def __init__(self, stub: scheduler_pb2_grpc.SchedulerStub, *, max_per_call: int = MAX_PER_CALL) -> None:
        self._stub = stub
        self._max_per_call = max_per_call
        # Set, and > 0 when asked: a release that finds no call in flight
        # waits this long for others to go with it (for callers nobody
        # waits on: batch rows).
        self.window_s: Callable[[], float] | None = None
        self._window_timer: asyncio.TimerHandle | None = None
        self._waiting: list[_Waiting] = []
        # A call to this replica is in flight (a release's own, or the
        # flusher's): releases arriving now wait for the next one.
        self._busy = False
        self._many_supported = True
        self._flusher: asyncio.Task[None] | None = None
        # Calls made, by kind (for tests and the benchmark's notes).
        self.single_calls = 0
        self.many_calls = 0

    async def release(self, request: scheduler_pb2.ReleaseRequest, **options: Any) -> scheduler_pb2.ReleaseResponse:
        """Give the lease back; the scheduler's answer. Raises the call's
        AioRpcError if it failed (the lease then expires on its own)."""
        if self._busy and self._many_supported:
            return await self._join_next_call(request)
        if not self._many_supported:
            # Nothing to group: each its own call, now.
            return await self._release_one(request, **options)
        self._busy = True
        window_s = self.window_s() if self.window_s is not None else 0.0
        if window_s > 0:
            # The next call goes after the window, with whatever came meanwhile.
            self._window_timer = asyncio.get_running_loop().call_later(window_s, self._hand_over)
            return await self._join_next_call(request)
        try:
            return await self._release_one(request, **options)
        finally:
            self._hand_over()

    async def _join_next_call(self, request: scheduler_pb2.ReleaseRequest) -> scheduler_pb2.ReleaseResponse:
        future: asyncio.Future[scheduler_pb2.ReleaseResponse] = asyncio.get_running_loop().create_future()
        # Read its outcome even if the caller stopped waiting (no
        # "exception never retrieved" noise).
        future.add_done_callback(read_outcome)
        self._waiting.append((request, future))
        # Shielded: a caller that stops waiting does not take its release
        # out of the batch it joined.
        return await asyncio.shield(future)

    async def _release_one(
        self, request: scheduler_pb2.ReleaseRequest, **options: Any
    ) -> scheduler_pb2.ReleaseResponse:
        self.single_calls += 1
        response: scheduler_pb2.ReleaseResponse = await self._stub.Release(request, **options)
        return response

    async def flush(self, timeout_s: float = 2.0) -> None:
        """Send what waits in a window now, and wait (at most `timeout_s`)
        for it to be sent: a consumer stopping gives its leases back."""
        self.window_s = None
        if self._window_timer is not None and not self._window_timer.cancelled():
            self._window_timer.cancel()
            self._hand_over()
        if self._flusher is not None and not self._flusher.done():
            await asyncio.wait((self._flusher,), timeout=timeout_s)

    def _hand_over(self) -> None:
        """The call in flight (or the window) ended: the flusher takes what
        waits, in a context of its own (not the trace of the release that
        started it)."""
        self._window_timer = None
        if self._waiting:
            self._flusher = asyncio.get_running_loop().create_task(
                self._flush(), name="lease-release-batch", context=contextvars.Context()
            )
        else:
            self._busy = False

    async def _flush(self) -> None:
        batch: list[_Waiting] = []
        try:
            while self._waiting:
                batch = self._waiting[: self._max_per_call]
                del self._waiting[: len(batch)]
                await self._send(batch)
        finally:
            # Normally nothing is left (the loop saw an empty list, with no
            # await after it). Stopped midway (shutdown): no waiter hangs.
            for _, future in [*batch, *self._waiting]:
                future.cancel()
            self._waiting.clear()
            self._busy = False

    async def _send(self, batch: list[_Waiting]) -> None:
        if len(batch) == 1 or not self._many_supported:
            await asyncio.gather(*(self._send_one(request, future) for request, future in batch))
            return
        try:
            self.many_calls += 1
            answer = await self._stub.ReleaseMany(
                scheduler_pb2.ReleaseManyRequest(releases=[request for request, _ in batch]), timeout=CALL_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                log.info("scheduler has no ReleaseMany (older version): releasing one by one")
                self._many_supported = False
                await self._send(batch)
                return
            for _, future in batch:
                fail(future, exc)
            return
        if len(answer.results) != len(batch):
            # Not this protocol's answer: count none as released.
            log.warning("ReleaseMany answered %d results for %d releases", len(answer.results), len(batch))
        for index, (_, future) in enumerate(batch):
            released = index < len(answer.results) and answer.results[index].released
            settle(future, scheduler_pb2.ReleaseResponse(released=released))

    async def _send_one(
        self, request: scheduler_pb2.ReleaseRequest, future: asyncio.Future[scheduler_pb2.ReleaseResponse]
    ) -> None:
        try:
            settle(future, await self._release_one(request, timeout=CALL_TIMEOUT_S))
        except grpc.aio.AioRpcError as exc:
            fail(future, exc)
