"""When a batch row may start: only into capacity that online work leaves
idle. The gate reads the worker's load every poll interval and lets a row
start while

    batch rows in flight < capacity - reserve - online requests + queue_ahead

and, while online requests are around (seen within online_linger_s), also

    batch rows in flight <= share_while_online x capacity

Online requests are the worker's Generate calls that are not batch rows,
running or waiting (the worker counts them: WorkerLoad.online). queue_ahead
lets a few rows wait in the engine's own queue, so it
never runs dry between one row ending and the next arriving (an engine that
schedules by priority runs online requests before them). The share cap is
there because every engine step slows with each sequence in it, and online
requests share those steps. When online traffic arrives, rows already
running finish, but no new one starts until there is room again: online
work comes first, batch work fills what is left.

Rows waiting for room are let in one at a time, first come first served
(the oldest chunk's rows first, so chunks finish and make way for the next).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from services.worker.consumer.attempt_errors import WorkerUnavailable


@dataclass(frozen=True)
class WorkerLoadReading:
    running: int
    waiting: int
    capacity: int
    # Requests at the worker that are not batch rows.
    online: int = 0


class LoadSource(Protocol):
    async def load(self) -> WorkerLoadReading | None:
        """The worker's load now; None when it does not answer."""
        ...


class AdmissionGate:
    def __init__(
        self,
        source: LoadSource,
        *,
        max_inflight: int,
        reserve_fraction: float,
        poll_s: float,
        queue_ahead: int = 0,
        share_while_online: float = 1.0,
        online_linger_s: float = 2.0,
        down_after_s: float = 10.0,
    ) -> None:
        self._source = source
        self._max_inflight = max_inflight
        self._reserve_fraction = reserve_fraction
        self._poll_s = poll_s
        self._queue_ahead = queue_ahead
        self._share_while_online = share_while_online
        self._online_linger_s = online_linger_s
        self._down_after_s = down_after_s
        self._reading: WorkerLoadReading | None = None
        self._inflight = 0
        self._online_seen_at = float("-inf")
        self._unanswered_since: float | None = None
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._poller: asyncio.Task[None] | None = None
        # Set when a row comes while the gate is idle: polling resumes.
        self._busy = asyncio.Event()

    @property
    def inflight(self) -> int:
        return self._inflight

    @property
    def waiting(self) -> int:
        return sum(1 for waiter in self._waiters if not waiter.done())

    async def start(self) -> None:
        await self._read()
        self._poller = asyncio.create_task(self._poll_forever(), name="batch-admission-poll")

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller

    def allowed(self) -> int:
        """Batch rows that may be in flight now."""
        reading = self._reading
        if reading is None:
            return 0
        reserve = math.ceil(reading.capacity * self._reserve_fraction)
        room = reading.capacity - reserve - reading.online
        if room <= 0:
            # Online work fills the engine: nothing new until it has room.
            return 0
        allowed = min(self._max_inflight, room + self._queue_ahead)
        if time.monotonic() - self._online_seen_at < self._online_linger_s:
            allowed = min(allowed, max(1, math.floor(reading.capacity * self._share_while_online)))
        return allowed

    def _down(self) -> bool:
        since = self._unanswered_since
        return since is not None and time.monotonic() - since >= self._down_after_s

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Wait for room, hold one row's place while the body runs."""
        while self._waiters and self._waiters[0].done():
            self._waiters.popleft()
        self._busy.set()
        if self._waiters or self._inflight >= self.allowed():
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                while True:
                    if self._down():
                        raise WorkerUnavailable(f"the worker has not answered for {self._down_after_s:.0f}s")
                    try:
                        # Shielded: a timeout must not cancel a place just granted.
                        await asyncio.wait_for(asyncio.shield(waiter), timeout=1.0)
                        break
                    except TimeoutError:
                        continue
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    # Granted, but we are leaving: pass the place on.
                    self._release()
                else:
                    waiter.cancel()
                raise
        else:
            self._inflight += 1
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        self._inflight -= 1
        self._grant()

    def _grant(self) -> None:
        """Let waiting rows in, oldest first, while there is room."""
        while self._waiters and self._inflight < self.allowed():
            waiter = self._waiters.popleft()
            if waiter.done():
                continue
            self._inflight += 1
            waiter.set_result(None)

    async def _read(self) -> None:
        reading = await self._source.load()
        self._reading = reading
        if reading is None:
            self._unanswered_since = self._unanswered_since or time.monotonic()
        else:
            self._unanswered_since = None
            if reading.online:
                self._online_seen_at = time.monotonic()
        self._grant()

    async def _poll_forever(self) -> None:
        while True:
            if self._inflight or self._waiters:
                await asyncio.sleep(self._poll_s)
            else:
                # Idle: no reading is needed until a row comes (then at once).
                self._busy.clear()
                await self._busy.wait()
            await self._read()
