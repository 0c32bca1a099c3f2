"""A dynamic batcher, after Triton's: items from concurrent calls queue up
and go to the model together, one call of `run_batch` per batch.

- A batch leaves when it holds `max_batch_size` items, or when its oldest
  item has waited `max_queue_delay_s` (the wait a lone request pays for the
  chance of company), whichever comes first. While a batch runs, the next
  one fills; if its oldest item already waited long enough, it leaves as
  soon as the model is free.
- The delay is only paid where company comes: after a batch of one item
  (callers one at a time), the next batch leaves with what is queued, so a
  lone caller never waits for a batch that cannot form.
- A call's items keep their order and may span batches (a call larger than
  `max_batch_size` is split); the call gets its results back in order once
  all of them are done.
- The queue is bounded (`max_queue_size` items): a call that does not fit
  fails at once with QueueFull, never waits without bound.
- A failed batch fails every call with an item in it, with the batch's
  error; other batches are unaffected. A caller that gives up (is
  cancelled) leaves its queued items behind, and they are skipped.

Batches run one at a time: the model call is the bottleneck, and running
two at once on the same cores only makes both slower.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from headrace.runtime.errors import HeadraceError, Internal, InvalidArgument, QueueFull, Unavailable

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class BatcherStats:
    # Calls to submit() accepted, batches run, items through the model.
    calls: int
    batches: int
    items: int
    # Items waiting now, and in the batch running now.
    queued: int
    running: int
    largest_batch: int


@dataclass
class _Pending(Generic[T, R]):
    item: T
    future: asyncio.Future[R]
    enqueued_at: float


class DynamicBatcher(Generic[T, R]):
    def __init__(
        self,
        run_batch: Callable[[list[T]], Awaitable[Sequence[R]]],
        *,
        max_batch_size: int,
        max_queue_delay_s: float,
        max_queue_size: int,
        name: str = "batcher",
    ) -> None:
        if max_batch_size < 1 or max_queue_size < 1 or max_queue_delay_s < 0:
            raise ValueError("max_batch_size and max_queue_size must be >= 1, max_queue_delay_s >= 0")
        self._run_batch = run_batch
        self._max_batch_size = max_batch_size
        self._max_delay_s = max_queue_delay_s
        self._max_queue_size = max_queue_size
        self._name = name
        self._queue: collections.deque[_Pending[T, R]] = collections.deque()
        self._arrived = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._closed = False
        self._calls = 0
        self._batches = 0
        self._items = 0
        self._running = 0
        self._largest = 0
        # Whether the last batch had more than one item: company is likely,
        # and worth the delay.
        self._company = True

    def stats(self) -> BatcherStats:
        return BatcherStats(
            calls=self._calls,
            batches=self._batches,
            items=self._items,
            queued=len(self._queue),
            running=self._running,
            largest_batch=self._largest,
        )

    async def submit(self, items: Sequence[T]) -> list[R]:
        """Results for `items`, in order, once every item has been through a batch."""
        if self._closed:
            raise Unavailable(f"{self._name} is closed")
        if not items:
            return []
        if len(items) > self._max_queue_size:
            raise InvalidArgument(
                f"{len(items)} inputs in one call exceed the queue bound of {self._max_queue_size}; split the call"
            )
        if len(self._queue) + len(items) > self._max_queue_size:
            raise QueueFull(
                f"{self._name}: queue full ({len(self._queue)} of {self._max_queue_size} items waiting)",
                retry_after_s=max(self._max_delay_s, 0.1),
            )
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        pending = [_Pending[T, R](item, loop.create_future(), now) for item in items]
        self._queue.extend(pending)
        self._calls += 1
        self._arrived.set()
        self._ensure_loop()
        try:
            return list(await asyncio.gather(*(p.future for p in pending)))
        finally:
            # Our caller gave up or a batch failed: drop what has not run yet.
            for p in pending:
                if not p.future.done():
                    p.future.cancel()

    async def close(self) -> None:
        """Stop; calls still waiting fail with Unavailable."""
        self._closed = True
        if self._loop_task is not None:
            self._loop_task.cancel()
            try:
                await self._loop_task
            except asyncio.CancelledError:
                pass
            self._loop_task = None
        while self._queue:
            p = self._queue.popleft()
            if not p.future.done():
                p.future.set_exception(Unavailable(f"{self._name} closed before this input ran"))

    def _ensure_loop(self) -> None:
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.get_running_loop().create_task(self._loop(), name=f"{self._name}-loop")

    async def _loop(self) -> None:
        while True:
            batch = await self._next_batch()
            await self._run(batch)

    async def _next_batch(self) -> list[_Pending[T, R]]:
        """Wait for a first live item, then for company until the batch is full
        or the oldest item's delay is spent."""
        while True:
            self._drop_cancelled()
            if self._queue:
                break
            self._arrived.clear()
            await self._arrived.wait()
        deadline = self._queue[0].enqueued_at + (self._max_delay_s if self._company else 0.0)
        while len(self._queue) < self._max_batch_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout=remaining)
            except TimeoutError:
                break
            self._drop_cancelled()
        batch: list[_Pending[T, R]] = []
        while self._queue and len(batch) < self._max_batch_size:
            p = self._queue.popleft()
            if not p.future.done():
                batch.append(p)
        return batch

    def _drop_cancelled(self) -> None:
        if any(p.future.done() for p in self._queue):
            self._queue = collections.deque(p for p in self._queue if not p.future.done())

    async def _run(self, batch: list[_Pending[T, R]]) -> None:
        if not batch:
            return
        self._running = len(batch)
        self._company = len(batch) > 1
        self._batches += 1
        self._items += len(batch)
        self._largest = max(self._largest, len(batch))
        try:
            results = await self._run_batch([p.item for p in batch])
            if len(results) != len(batch):
                raise Internal(f"{self._name}: the model returned {len(results)} results for {len(batch)} inputs")
        except asyncio.CancelledError:
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(Unavailable(f"{self._name} stopped while this input ran"))
            raise
        except Exception as exc:
            error = exc if isinstance(exc, HeadraceError) else Internal(f"{self._name}: batch failed: {exc}")
            if error is not exc:
                log.exception("%s: batch of %d failed", self._name, len(batch))
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(error)
            return
        finally:
            self._running = 0
        for p, result in zip(batch, results, strict=True):
            if not p.future.done():
                p.future.set_result(result)
