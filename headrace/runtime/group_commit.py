"""Calls to one service, coalesced by group commit: lease releases to a
scheduler replica, the router's cache lookups and stores.

A unary gRPC call costs a few hundred microseconds of CPU on each side
whatever it carries: under load, a good part of what a service does per
request. So an item goes out at once, as a call of its own, when no call
is in flight (nothing waits, and it keeps its caller's call options and
trace), and the items that come while one is in flight wait for it and
then go together in one call of the service's "Many" method (no timer,
no wait beyond the call in flight). A coalesced item is not on its
request's trace; with `alone_when_traced`, the item of a request whose
span is recorded always goes alone, on its trace (the router's lookups and
placements: the trace tree shows each). With a window set (> 0), an item
that finds no call in flight waits that long for others instead of going
alone (for callers nobody waits on: a batch consumer's releases).

Each Many message is made when its call goes (a store's age, a lookup's
budget are read then). A service without the Many method (an older one
during an upgrade) answers UNIMPLEMENTED: the waiting items then go one
call each, side by side, and so do later ones (held behind a call in
flight, they would go one at a time).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

import grpc
import grpc.aio
from opentelemetry import trace

from headrace.runtime.errors import no_such_method
from headrace.runtime.future_outcomes import fail, read_outcome, settle

log = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")


class GroupCommit(Generic[Item, Result]):
    def __init__(
        self,
        *,
        name: str,
        many: Callable[[Sequence[Item]], Awaitable[Sequence[Result]]],
        one: Callable[..., Awaitable[Result]],
        missing: Callable[[], Result],
        max_per_call: int,
        size: Callable[[Item], int] | None = None,
        max_bytes_per_call: int | None = None,
        alone_when_traced: bool = False,
    ) -> None:
        """many: one call for several items, results in order; one(item,
        **options): a call for one item (the caller's options when it goes
        alone, none when a service without `many` gets the waiting ones);
        missing: the result of an item a reply left out; size: an item's
        bytes on the wire, so a call carries up to max_bytes_per_call (a
        larger item goes alone); alone_when_traced: a traced request's item
        goes as its own call, with its caller's options."""
        self._name = name
        self._many = many
        self._one = one
        self._missing = missing
        self._max_per_call = max_per_call
        self._size = size
        self._max_bytes = max_bytes_per_call
        self._alone_when_traced = alone_when_traced
        # Set, and > 0 when asked: an item that finds no call in flight
        # waits this long for others to go with it.
        self.window_s: Callable[[], float] | None = None
        self._window_timer: asyncio.TimerHandle | None = None
        self._waiting: list[tuple[Item, asyncio.Future[Result]]] = []
        # A call is in flight (an item's own, or the flusher's), or a window
        # is open: items arriving now wait for the next call.
        self._busy = False
        self._many_supported = True
        self._flusher: asyncio.Task[None] | None = None
        # Calls made, by kind (for tests and the benchmarks' notes).
        self.single_calls = 0
        self.many_calls = 0

    async def call(self, item: Item, *, keep_if_abandoned: bool = True, **options: Any) -> Result:
        """The item's result; raises its call's AioRpcError if that failed.
        keep_if_abandoned: a caller that stops waiting leaves its item in the
        call it joined (a release, a store); else an item not sent yet is
        dropped (a lookup whose caller timed out)."""
        if not self._many_supported or (self._alone_when_traced and trace.get_current_span().is_recording()):
            # Nothing to group (or a traced request's item): its own call, now.
            return await self._call_one(item, **options)
        if self._busy:
            return await self._join(item, keep_if_abandoned)
        self._busy = True
        window_s = self.window_s() if self.window_s is not None else 0.0
        if window_s > 0:
            # The next call goes after the window, with whatever came meanwhile.
            self._window_timer = asyncio.get_running_loop().call_later(window_s, self._hand_over)
            return await self._join(item, keep_if_abandoned)
        try:
            return await self._call_one(item, **options)
        finally:
            self._hand_over()

    async def flush(self, timeout_s: float = 2.0) -> None:
        """Send what waits in a window now, and wait (at most `timeout_s`)
        for it to be sent (a consumer stopping gives its leases back)."""
        self.window_s = None
        if self._window_timer is not None and not self._window_timer.cancelled():
            self._window_timer.cancel()
            self._hand_over()
        if self._flusher is not None and not self._flusher.done():
            await asyncio.wait((self._flusher,), timeout=timeout_s)

    async def _call_one(self, item: Item, **options: Any) -> Result:
        self.single_calls += 1
        return await self._one(item, **options)

    async def _join(self, item: Item, keep_if_abandoned: bool) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        future.add_done_callback(read_outcome)
        self._waiting.append((item, future))
        # Shielded, the future outlives a caller that stops waiting;
        # unshielded, that caller's cancellation cancels it and _next_batch
        # leaves the item out.
        return await (asyncio.shield(future) if keep_if_abandoned else future)

    def _hand_over(self) -> None:
        """The call in flight (or the window) ended: the flusher takes what
        waits, in a context of its own (not the trace of the item that
        started it)."""
        self._window_timer = None
        if self._waiting:
            self._flusher = asyncio.get_running_loop().create_task(
                self._flush(), name=self._name, context=contextvars.Context()
            )
        else:
            self._busy = False

    async def _flush(self) -> None:
        batch: list[tuple[Item, asyncio.Future[Result]]] = []
        try:
            while self._waiting:
                batch = self._next_batch()
                if batch:
                    await self._send(batch)
        finally:
            # Normally nothing is left (the loop saw an empty list, with no
            # await after it). Stopped midway (shutdown): no waiter hangs.
            for _, future in [*batch, *self._waiting]:
                future.cancel()
            self._waiting.clear()
            self._busy = False

    def _next_batch(self) -> list[tuple[Item, asyncio.Future[Result]]]:
        self._waiting = [(item, future) for item, future in self._waiting if not future.done()]
        count, size = 0, 0
        for item, _ in self._waiting[: self._max_per_call]:
            if self._size is not None and self._max_bytes is not None:
                size += self._size(item)
                if count and size > self._max_bytes:
                    break
            count += 1
        batch = self._waiting[:count]
        del self._waiting[:count]
        return batch

    async def _send(self, batch: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        if len(batch) == 1 or not self._many_supported:
            await asyncio.gather(*(self._send_one(item, future) for item, future in batch))
            return
        try:
            self.many_calls += 1
            results = await self._many([item for item, _ in batch])
        except grpc.aio.AioRpcError as exc:
            if no_such_method(exc):
                log.info("%s: the service has no such call (older version): one call each", self._name)
                self._many_supported = False
                await self._send(batch)
                return
            for _, future in batch:
                fail(future, exc)
            return
        except Exception as exc:
            # Never leave a caller waiting on a call that is over.
            log.exception("%s: the call failed", self._name)
            for _, future in batch:
                fail(future, exc)
            return
        if len(results) != len(batch):
            log.warning("%s: %d results for %d items", self._name, len(results), len(batch))
        for index, (_, future) in enumerate(batch):
            settle(future, results[index] if index < len(results) else self._missing())

    async def _send_one(self, item: Item, future: asyncio.Future[Result]) -> None:
        try:
            settle(future, await self._call_one(item))
        except grpc.aio.AioRpcError as exc:
            fail(future, exc)
        except Exception as exc:
            log.exception("%s: the call failed", self._name)
            fail(future, exc)
