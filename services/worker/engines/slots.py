"""A bound on the requests an engine sends its backend at once, counting
those running and those waiting for a place (what EngineStats reports).

Waiting requests get a place in priority order (interactive, standard,
batch; first come first served within one), as vLLM's priority scheduling
does: the scheduler may lease batch rows into an engine's queue (its
batch_queue_ahead) and still place online requests in front of them."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections.abc import AsyncIterator
from types import TracebackType

from services.worker.engines.base import Priority


class Slots:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.running = 0
        self.waiting = 0
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    @contextlib.asynccontextmanager
    async def at(self, priority: Priority) -> AsyncIterator[None]:
        """Hold a place, waiting behind more important work for it."""
        await self._acquire(int(priority))
        try:
            yield
        finally:
            self._release()

    async def __aenter__(self) -> None:
        await self._acquire(int(Priority.STANDARD))

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._release()

    async def _acquire(self, priority: int) -> None:
        # Any place free now has no one waiting for it (_release hands places
        # out while there are), so a free place is ours.
        if self.running < self.capacity:
            self.running += 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (priority, next(self._order), future))
        self.waiting += 1
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                # Handed a place just as we left: pass it on.
                self._release()
            raise
        finally:
            self.waiting -= 1

    def _release(self) -> None:
        self.running -= 1
        while self._waiters and self.running < self.capacity:
            _, _, future = heapq.heappop(self._waiters)
            if future.done():
                continue
            self.running += 1
            future.set_result(None)
