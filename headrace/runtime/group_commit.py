"""Calls to one service, coalesced by group commit.

A unary gRPC call costs a few hundred microseconds of CPU on each side
whatever it carries. So an item goes out at once when no call is in
flight, and the items that come while one is in flight wait for it and
then go together in one call of the service's "Many" method (no timer,
no wait beyond the call in flight). Each message is made when its call
goes (a store's age, a lookup's budget are read then). A service without
the Many method (an older one during an upgrade) answers UNIMPLEMENTED:
the items then go one call each, and so do later ones. Calls run in a
context of their own: a coalesced item is not on its request's trace.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

import grpc
import grpc.aio

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
        one: Callable[[Item], Awaitable[Result]],
        size: Callable[[Item], int],
        missing: Callable[[], Result],
        max_per_call: int,
        max_bytes_per_call: int,
    ) -> None:
        """many: one call for several items, results in order; one: a call
        for one item (a service without `many`); size: an item's bytes on
        the wire (a call carries up to max_bytes_per_call; a larger item
        goes alone); missing: the result of an item a reply left out."""
        self._name = name
        self._many = many
        self._one = one
        self._size = size
        self._missing = missing
        self._max_per_call = max_per_call
        self._max_bytes = max_bytes_per_call
        self._waiting: list[tuple[Item, asyncio.Future[Result]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._many_supported = True
        # Calls made, by kind (for tests and the benchmarks' notes).
        self.single_calls = 0
        self.many_calls = 0

    async def call(self, item: Item) -> Result:
        """The item's result; raises its call's AioRpcError if that failed.
        A caller that stops waiting leaves its item in (stores, releases)."""
        return await asyncio.shield(self.submit(item))

    def submit(self, item: Item) -> asyncio.Future[Result]:
        """The item's result to come. Cancelled before its call goes (its
        caller gave up: a lookup's timeout), the item is not sent."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        future.add_done_callback(read_outcome)
        self._waiting.append((item, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush(), name=self._name, context=contextvars.Context())
        return future

    async def _flush(self) -> None:
        batch: list[tuple[Item, asyncio.Future[Result]]] = []
        try:
            while self._waiting:
                batch = self._next_batch()
                if batch:
                    await self._send(batch)
        finally:
            # Stopped midway (shutdown): no waiter hangs.
            for _, future in [*batch, *self._waiting]:
                future.cancel()
            self._waiting.clear()

    def _next_batch(self) -> list[tuple[Item, asyncio.Future[Result]]]:
        self._waiting = [(item, future) for item, future in self._waiting if not future.done()]
        count, size = 0, 0
        for item, _ in self._waiting[: self._max_per_call]:
            size += self._size(item)
            if count and size > self._max_bytes:
                break
            count += 1
        batch = self._waiting[:count]
        del self._waiting[:count]
        return batch

    async def _send(self, batch: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        if not self._many_supported:
            await asyncio.gather(*(self._send_one(item, future) for item, future in batch))
            return
        try:
            self.many_calls += 1
            results = await self._many([item for item, _ in batch])
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
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
            self.single_calls += 1
            settle(future, await self._one(item))
        except grpc.aio.AioRpcError as exc:
            fail(future, exc)
