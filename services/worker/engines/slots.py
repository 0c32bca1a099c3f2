"""A bound on the requests an engine sends its backend at once, counting
those running and those waiting for a place (what EngineStats reports)."""

from __future__ import annotations

import asyncio
from types import TracebackType


class Slots:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.running = 0
        self.waiting = 0
        self._free = asyncio.Semaphore(capacity)

    async def __aenter__(self) -> None:
        self.waiting += 1
        try:
            await self._free.acquire()
        finally:
            self.waiting -= 1
        self.running += 1

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.running -= 1
        self._free.release()
