"""Admission for one pool: a bounded queue of Place calls waiting for a
slot, and the scheduling step that hands slots out.

A Place call queues a waiter and awaits its future; one task per pool runs
the scheduling step whenever something changes (a call arrives, a lease is
released or expires, a worker reports): it walks the queue in service order
(fair_queue.py) and leases the first waiter that fits on a worker with a
free slot (capacity.py), as chosen by the pool's policy (placement.py),
until nothing more fits. The step runs in its own task so a caller that
gives up mid-step cannot interrupt it.

Batch rows are admitted here too, as waiters of the batch class (the
consumer beside each worker asks for a lease on its worker before a row
runs). Batch waiters are considered only when no online (interactive or
standard) waiter is queued, and batch leases never keep an online request
off a worker (engines run online work first). Alone, batch may fill every
slot and batch_queue_ahead more; while online work is around (queued,
leased, or seen within online_linger_s), batch holds at most
batch_share_while_online of a worker's slots (capacity.py).

The queue holds as many waiters as the pool drains within
max_expected_wait_s, and a refusal's retry-after is when the queue ahead
will have drained (wait_bound.py).

Every waiter ends one way: leased; refused at once (queue full:
RESOURCE_EXHAUSTED + retry-after); pushed out by more important or fairer
work (the same); out of time (the caller's deadline: DEADLINE_EXCEEDED;
the pool's max wait: RESOURCE_EXHAUSTED); cancelled by its caller; or
failed because no worker serves its model any more (UNAVAILABLE). A lease
granted to a caller that has already left is released at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from headrace.runtime.config import PoolSchedulingSettings
from headrace.runtime.errors import DeadlineExceeded, NoWorkerAvailable, QueueFull, Unavailable
from services.scheduler import metrics
from services.scheduler.capacity import SlotModel
from services.scheduler.fair_queue import FairQueue
from services.scheduler.leases import LeaseRecord, LeaseTable
from services.scheduler.placement import PlacementPolicy, PlacementRequest
from services.scheduler.wait_bound import WaitBound
from services.scheduler.worker_roster import WorkerRoster, WorkerState

log = logging.getLogger(__name__)

PRIORITY_NAMES = ("interactive", "standard", "batch")
BATCH = 2
# Completion budget assumed for fairness when a request sets no max_tokens.
DEFAULT_COMPLETION_TOKENS = 256
# Answer DEADLINE_EXCEEDED this long before the caller's deadline, so the
# status (with its message) arrives before the caller gives up on its own.
_DEADLINE_MARGIN_S = 0.02


@dataclass(frozen=True)
class Placement:
    lease: LeaseRecord
    endpoint: str
    policy: str
    queue_ms: float


@dataclass(eq=False)
class Waiter:
    request: PlacementRequest
    future: asyncio.Future[Placement]
    enqueued_at: float
    # When no live worker could take it any more (None: one could).
    orphaned_since: float | None = None


def request_tokens(request: PlacementRequest) -> int:
    """A request's token budget: prompt plus completion (the engine's
    default when it sets none)."""
    return max(1, request.prompt_tokens + (request.max_tokens or DEFAULT_COMPLETION_TOKENS))


def request_cost(request: PlacementRequest) -> float:
    """What a request costs its tenant's fair share: its token budget."""
    return float(request_tokens(request))


class PoolAdmission:
    def __init__(
        self,
        *,
        pool: str,
        settings: PoolSchedulingSettings,
        registry: WorkerRoster,
        leases: LeaseTable,
        policy: PlacementPolicy,
        weight_of: Callable[[str], float],
        orphan_grace_s: float = 3.0,
    ) -> None:
        self.pool = pool
        self.settings = settings
        self.policy = policy
        self.slots = SlotModel.from_settings(settings)
        self.queue: FairQueue[Waiter] = FairQueue(limit=settings.queue_limit, weight_of=weight_of)
        self._registry = registry
        self._leases = leases
        self._orphan_grace_s = orphan_grace_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # When online work was last seen (arrived, granted or released).
        self._online_seen_at = float("-inf")
        # Queue bound and retry-after from the pool's drain rate.
        self.wait_bound = WaitBound(max_wait_s=settings.max_expected_wait_s, ceiling=settings.queue_limit)
        # Leases granted so far.
        self.granted = 0
        self._closed = False
        # The metric children every placement touches, looked up once.
        self._placed = metrics.PLACEMENTS.labels(pool=pool, policy=policy.name)
        self._queue_wait = [metrics.QUEUE_WAIT.labels(pool=pool, priority=name) for name in PRIORITY_NAMES]
        self._queue_depth = [metrics.QUEUE_DEPTH.labels(pool=pool, priority=name) for name in PRIORITY_NAMES]

    # --- lifecycle -----------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"scheduler-admission:{self.pool}")

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for waiter in self.queue.ordered():
            self.queue.remove(waiter)
            if not waiter.future.done():
                waiter.future.set_exception(Unavailable("the scheduler is stopping", retry_after_s=1.0))

    def kick(self) -> None:
        """Something changed: run a scheduling step soon."""
        if len(self.queue):
            self._wake.set()

    # --- Place -----------------------------------------------------------

    async def place(self, request: PlacementRequest, *, timeout_s: float | None) -> Placement:
        if self._closed:
            raise Unavailable("the scheduler is stopping", retry_after_s=1.0)
        self.start()
        priority = min(request.priority, BATCH)
        waiter = Waiter(request, asyncio.get_running_loop().create_future(), time.monotonic())
        if priority < BATCH:
            self._online_seen_at = waiter.enqueued_at
        deadline = None if timeout_s is None else waiter.enqueued_at + timeout_s
        if not self._ahead_of(priority):
            # Nobody queued comes first: take a free slot now, if there is one.
            placement = await self._place_now(waiter)
            if placement is not None:
                return placement
        if request.only_if_free:
            # Asked ahead of a cache lookup: a hit would hold a place in the
            # queue for nothing. Not a rejection: the router asks again,
            # queueing, if the cache misses.
            raise QueueFull(
                f"no free slot in pool {self.pool!r} now (only_if_free)", retry_after_s=self.retry_after_s()
            )
        # The expected-wait bound is for online work; batch waits by design,
        # up to queue_limit, and an online newcomer pushes a batch waiter out.
        self.queue.limit = (
            self.settings.queue_limit if priority >= BATCH else self.wait_bound.limit(self.nominal_slots())
        )
        admission = self.queue.push(waiter, cls=priority, tenant=request.tenant, cost=request_cost(request))
        if not admission.admitted:
            self._reject(priority, "queue_full")
            raise QueueFull(
                f"no free slot in pool {self.pool!r} and its queue is full ({self.queue.limit} waiting, "
                f"about {self.settings.max_expected_wait_s:g}s of work); retry later",
                retry_after_s=self.retry_after_s(),
            )
        if admission.evicted is not None:
            evicted = admission.evicted
            self._reject(min(evicted.request.priority, BATCH), "evicted")
            evicted.future.set_exception(
                QueueFull(
                    f"the queue of pool {self.pool!r} is full and more important or fairer work took "
                    "this request's place; retry later",
                    retry_after_s=self.retry_after_s(),
                )
            )
        self._update_depth()
        self._wake.set()

        wait_s = self.settings.max_queue_wait_s
        caller_left_s = None if deadline is None else deadline - time.monotonic() - _DEADLINE_MARGIN_S
        limited_by_caller = caller_left_s is not None and caller_left_s < wait_s
        if caller_left_s is not None and limited_by_caller:
            wait_s = max(0.0, caller_left_s)
        try:
            await asyncio.wait((waiter.future,), timeout=wait_s)
        except asyncio.CancelledError:
            self._abandon(waiter)
            self._reject(priority, "cancelled")
            raise
        if waiter.future.done():
            return waiter.future.result()
        self._abandon(waiter)
        waited = time.monotonic() - waiter.enqueued_at
        if limited_by_caller:
            self._reject(priority, "deadline")
            raise DeadlineExceeded(
                f"no slot in pool {self.pool!r} before the deadline ({waited:.3f}s in the queue, "
                f"{len(self.queue)} still waiting)"
            )
        self._reject(priority, "max_wait")
        raise QueueFull(
            f"no slot in pool {self.pool!r} within max_queue_wait_s ({self.settings.max_queue_wait_s:g}s); retry later",
            retry_after_s=self.retry_after_s(),
        )

    def _ahead_of(self, priority: int) -> bool:
        """Whether queued work would go before a request of this class
        (batch: any queued work; online work goes first)."""
        if priority >= BATCH:
            return len(self.queue) > 0
        return any(self.queue.depth(cls) for cls in range(priority + 1))

    async def _place_now(self, waiter: Waiter) -> Placement | None:
        batch = min(waiter.request.priority, BATCH) >= BATCH
        candidates = self.candidates(waiter.request, batch=batch)
        if not candidates:
            return None
        chosen = await self.policy.choose(waiter.request, candidates)
        # The choice may have taken a while: is the worker still free?
        if chosen is None or chosen not in candidates or not self._still_free(chosen, waiter.request, batch=batch):
            return None
        self._grant(waiter, chosen)
        return waiter.future.result()

    def retry_after_s(self) -> float:
        """When a slot is likely: once the queue ahead has drained."""
        return self.wait_bound.retry_after_s(len(self.queue), self.nominal_slots())

    def _abandon(self, waiter: Waiter) -> None:
        """The caller gives up: free its place, or the lease it just got."""
        if waiter.future.done():
            if not waiter.future.cancelled() and waiter.future.exception() is None:
                lease = waiter.future.result().lease
                log.info("lease %s granted as its caller left; releasing it", lease.lease_id)
                self.release(lease, used=False)
        else:
            self.queue.remove(waiter)
            waiter.future.cancel()
            self._update_depth()

    def release(self, lease: LeaseRecord, *, used: bool = True) -> LeaseRecord | None:
        """`used`: work ran on the lease (False: given back unused, e.g.
        placed beside a cache lookup that hit)."""
        released = self._leases.release(lease.lease_id, self._registry.get(lease.worker_id))
        if released is not None and not released.batch:
            self._online_seen_at = time.monotonic()
        if released is not None and used and released.uncounted_wait is not None:
            priority, waited = released.uncounted_wait
            self._queue_wait[priority].observe(waited)
        now = time.monotonic()
        if released is not None and used and now < released.expires_at and not released.batch:
            # Released by its holder after use (an expired lease, or one
            # given back unused within milliseconds, says nothing of the
            # engine: counted, cache hits would make the pool look as
            # many times faster as they are frequent); online holds only:
            # a batch row's says nothing of how fast online waiters get slots.
            self.wait_bound.observe_hold(now - released.granted_at)
        self.kick()
        return released

    def online_active(self, now: float | None = None) -> bool:
        """Whether online work is around: queued, holding leases in this
        pool, or seen within online_linger_s (it comes in bursts; batch
        must not refill the slots between two requests of a burst)."""
        now = time.monotonic() if now is None else now
        if now - self._online_seen_at < self.settings.online_linger_s:
            return True
        if any(self.queue.depth(cls) for cls in range(BATCH)):
            return True
        return any(s.leases > s.batch_leases for s in self.workers())

    # --- the scheduling step ---------------------------------------------

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.step()
            except Exception:
                # A bug here must not stop the pool: log it and go on.
                log.exception("scheduling step of pool %s failed", self.pool)

    async def step(self) -> int:
        """Lease slots to waiters, in service order, until nothing more
        fits. Returns how many were placed."""
        granted_before = self.granted
        while len(self.queue):
            if not await self._place_one():
                break
        placed = self.granted - granted_before
        if placed:
            self._update_depth()
        return placed

    async def _place_one(self) -> bool:
        """Lease one waiter a slot; False when none fits now."""
        online_waiting = any(self.queue.depth(cls) for cls in range(BATCH))
        # (model version, excluded workers, batch) of waiters no worker can
        # take now: the waiters behind them with the same needs are skipped
        # without another walk over the workers (a full pool's step would
        # otherwise cost queue length x workers, on every report).
        no_room: set[tuple[str, frozenset[str], str, bool]] = set()
        online_active: bool | None = None
        for waiter in self.queue.ordered():
            batch = self.queue.class_of(waiter) >= BATCH
            if batch and online_waiting:
                # Batch only runs when no online request waits (ordered()
                # lists batch last, so nothing after this can run either).
                return False
            request = waiter.request
            needs = (request.model_version, request.exclude, request.worker_id, batch)
            if needs in no_room:
                continue
            if batch and online_active is None:
                online_active = self.online_active()
            candidates = self.candidates(request, batch=batch, online_active=bool(online_active))
            if not candidates:
                no_room.add(needs)
                continue
            chosen = await self.policy.choose(waiter.request, candidates)
            if waiter not in self.queue:
                # It left while the policy chose: start over.
                return True
            if chosen is None:
                continue
            if chosen not in candidates:
                log.error("policy %s chose %s, not a candidate; ignored", self.policy.name, chosen.worker_id)
                continue
            self._grant(waiter, chosen)
            return True
        return False

    def candidates(
        self, request: PlacementRequest, *, batch: bool = False, online_active: bool | None = None
    ) -> list[WorkerState]:
        # This pool's workers only: a version may be served by several pools.
        workers = [
            s for s in self._registry.candidates(request.model_version, request.exclude) if s.identity.pool == self.pool
        ]
        if request.worker_id:
            workers = [state for state in workers if state.worker_id == request.worker_id]
        if not workers:
            return []
        if not batch:
            return [state for state in workers if self.slots.free_for_online(state) > 0]
        active = self.online_active() if online_active is None else online_active
        return [state for state in workers if self.slots.free_for_batch(state, online_active=active) > 0]

    def _still_free(self, state: WorkerState, request: PlacementRequest, *, batch: bool) -> bool:
        """Whether a worker that was a candidate still is: the same registry
        entry (a new identity replaces it), accepting, with a free slot."""
        if self._registry.get(state.worker_id) is not state or not self._registry.accepting(state):
            return False
        return state in self.candidates(request, batch=batch)

    def _grant(self, waiter: Waiter, worker: WorkerState) -> None:
        request = waiter.request
        lease = self._leases.grant(
            worker,
            pool=self.pool,
            request_id=request.request_id,
            model_version=request.model_version,
            tokens=request_tokens(request),
            batch=min(request.priority, BATCH) >= BATCH,
        )
        if not lease.batch:
            self._online_seen_at = time.monotonic()
        if waiter in self.queue:
            self.queue.take(waiter)
        self.granted += 1
        now = time.monotonic()
        waited = now - waiter.enqueued_at
        self._placed.inc()
        if request.only_if_free:
            lease.uncounted_wait = (min(request.priority, BATCH), waited)
        else:
            self._queue_wait[min(request.priority, BATCH)].observe(waited)
        waiter.future.set_result(
            Placement(lease=lease, endpoint=worker.identity.endpoint, policy=self.policy.name, queue_ms=waited * 1000)
        )

    # --- housekeeping (the dispatcher's sweep) ---------------------------

    def fail_orphans(self, now: float) -> int:
        """Fail waiters that no live worker could take for longer than the
        grace period (a worker restarting gets that long to come back)."""
        failed = 0
        for waiter in self.queue.ordered():
            request = waiter.request
            if self._registry.has_candidate(request.model_version, request.exclude, request.worker_id):
                waiter.orphaned_since = None
                continue
            if waiter.orphaned_since is None:
                waiter.orphaned_since = now
            elif now - waiter.orphaned_since >= self._orphan_grace_s:
                self.queue.remove(waiter)
                self._reject(min(request.priority, BATCH), "no_worker")
                waiter.future.set_exception(
                    NoWorkerAvailable(f"no live worker serves {request.model_version} any more", retry_after_s=1.0)
                )
                failed += 1
        if failed:
            self._update_depth()
        return failed

    def workers(self) -> list[WorkerState]:
        return [s for s in self._registry.all() if s.identity.pool == self.pool]

    def capacity(self, workers: Sequence[WorkerState] | None = None) -> int:
        now = time.monotonic()
        return sum(
            self.slots.limit(s)
            for s in (workers if workers is not None else self.workers())
            if self._registry.accepting(s, now)
        )

    def nominal_slots(self) -> int:
        """Sequences the live workers run at once when busy: what the drain
        rate scales with (capacity() is what they take now, 0 while full)."""
        now = time.monotonic()
        default = self.settings.default_worker_slots
        return sum(s.load.capacity or default for s in self.workers() if self._registry.accepting(s, now))

    def refresh_gauges(self) -> None:
        workers = self.workers()
        metrics.SLOTS.labels(pool=self.pool).set(self.capacity(workers))
        metrics.LEASED.labels(pool=self.pool).set(sum(s.leases for s in workers))
        self.queue.prune()
        self._update_depth()

    def _update_depth(self) -> None:
        for cls, gauge in enumerate(self._queue_depth):
            gauge.set(self.queue.depth(cls))

    def _reject(self, priority: int, reason: str) -> None:
        metrics.REJECTIONS.labels(pool=self.pool, priority=PRIORITY_NAMES[priority], reason=reason).inc()
