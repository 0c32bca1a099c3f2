"""Where requests run: one admission queue per pool over the shared worker
registry and lease table, and the housekeeping that keeps them true (stale
workers dropped, expired leases reclaimed, orphaned waiters failed). Knows
nothing of gRPC.

All of it is soft state in this process's memory: workers report to every
scheduler replica, and a lease belongs to the replica that granted it
(docs/scheduler.md says why)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from headrace.runtime.config import PoolSchedulingSettings, Settings
from headrace.runtime.errors import NoWorkerAvailable
from services.scheduler import metrics
from services.scheduler.admission import BATCH, Placement, PoolAdmission
from services.scheduler.autoscaler import Decision, PoolAutoscaling
from services.scheduler.leases import LeaseRecord, LeaseTable
from services.scheduler.placement import PlacementRequest, build_policy
from services.scheduler.pool_choice import PoolOption, choose_pool, usd_per_million_tokens
from services.scheduler.spill_sizing import GroupMember, SharedSizing, share_demand
from services.scheduler.worker_roster import LoadSnapshot, WorkerIdentity, WorkerRoster, WorkerState

log = logging.getLogger(__name__)

__all__ = ["Dispatcher", "Placement", "PoolDirectory"]


@dataclass(frozen=True)
class PoolDirectory:
    """Which pool serves a model version, and how each pool is scheduled."""

    # "name@version" -> pool
    model_pools: Mapping[str, str] = field(default_factory=dict)
    pool_settings: Mapping[str, PoolSchedulingSettings] = field(default_factory=dict)
    # Tenant -> weight within its priority class (unknown tenants: 1).
    tenant_weights: Mapping[str, float] = field(default_factory=dict)
    # Pool -> the worker count its config asks for (the autoscaler's start).
    configured_workers: Mapping[str, int] = field(default_factory=dict)
    # "name@version" -> every pool serving it, its own first (only versions
    # with more than one), and what each pool costs and delivers.
    version_pools: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    pool_prices: Mapping[str, float] = field(default_factory=dict)
    pool_throughput: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings) -> PoolDirectory:
        return cls(
            model_pools={
                version: settings.version_pools(version)[0]
                for pool in settings.pools
                for version in settings.pool_models(pool)
            },
            version_pools={
                version: tuple(pools)
                for pool in settings.pools
                for version in settings.pool_models(pool)
                if len(pools := settings.version_pools(version)) > 1
            },
            pool_prices={name: pool.price_per_hour for name, pool in settings.pools.items()},
            pool_throughput={
                name: pool.throughput_tokens_per_s
                for name, pool in settings.pools.items()
                if pool.throughput_tokens_per_s is not None
            },
            pool_settings={pool: settings.scheduler.for_pool(pool) for pool in settings.pools},
            tenant_weights={name: tenant.weight for name, tenant in settings.tenants.items()},
            configured_workers={name: pool.workers for name, pool in settings.pools.items()},
        )

    def settings_for(self, pool: str) -> PoolSchedulingSettings:
        return self.pool_settings.get(pool) or PoolSchedulingSettings()

    def weight_of(self, tenant: str) -> float:
        return self.tenant_weights.get(tenant, 1.0)


class Dispatcher:
    def __init__(
        self,
        *,
        registry: WorkerRoster,
        leases: LeaseTable,
        pools: PoolDirectory | None = None,
        sweep_interval_s: float = 0.5,
        orphan_grace_s: float = 3.0,
        rng: random.Random | None = None,
    ) -> None:
        self.registry = registry
        self.leases = leases
        self.pools = pools or PoolDirectory()
        self._sweep_interval_s = sweep_interval_s
        self._orphan_grace_s = orphan_grace_s
        self._rng = rng or random.Random()
        self._admissions: dict[str, PoolAdmission] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._best_throughput: dict[str, float] = {}
        self.autoscaling = PoolAutoscaling(
            lambda pool: self.pools.settings_for(pool).autoscale, self.pools.configured_workers
        )

    async def start(self) -> None:
        for pool in self.pools.pool_settings:
            admission = self.admission(pool)
            log.info("pool %s: policy %s, queue limit %d", pool, admission.policy.name, admission.queue.limit)
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="scheduler-sweeper")

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        for admission in self._admissions.values():
            await admission.close()

    # --- pools -------------------------------------------------------------

    def admission(self, pool: str) -> PoolAdmission:
        admission = self._admissions.get(pool)
        if admission is None:
            settings = self.pools.settings_for(pool)
            admission = PoolAdmission(
                pool=pool,
                settings=settings,
                registry=self.registry,
                leases=self.leases,
                policy=build_policy(settings, random.Random(self._rng.random())),
                weight_of=self.pools.weight_of,
                orphan_grace_s=self._orphan_grace_s,
            )
            self._admissions[pool] = admission
        return admission

    def pool_names(self) -> list[str]:
        """Pools configured or reported by a worker."""
        names = set(self.pools.pool_settings) | {s.identity.pool for s in self.registry.all()}
        return sorted(names)

    def _pool_of(self, model_version: str) -> str | None:
        pool = self.pools.model_pools.get(model_version)
        if pool is not None:
            return pool
        # Not in our config (e.g. a version rolled out ahead of it): the pool
        # its workers say they belong to.
        serving = self.registry.serving(model_version)
        return serving[0].identity.pool if serving else None

    # --- Place / Release / Renew -------------------------------------------

    async def place(self, request: PlacementRequest, *, timeout_s: float | None = None) -> Placement:
        """A lease on a worker for the request, once a slot is free; see
        admission.py for every way this ends."""
        pool = self._pool_of(request.model_version)
        pools = self.pools.version_pools.get(request.model_version)
        if pools and request.worker_id:
            # Pinned (a batch consumer asking for room on its worker): that
            # worker's pool admits it, which need not be the version's own.
            pool = self._pool_of_worker(request.worker_id, pools) or pool
        elif pools:
            pool = self._cheapest_pool(request, pools)
        if pool is None or not self.registry.has_candidate(request.model_version, request.exclude, request.worker_id):
            # Nothing could ever take it: say so now rather than queue.
            raise NoWorkerAvailable(self._why_no_worker(request), retry_after_s=1.0)
        asked_at = time.monotonic()
        placement = await self.admission(pool).place(request, timeout_s=timeout_s)
        # A placement made ahead counts its wait once used (release()).
        if request.priority < BATCH and not request.only_if_free:
            # Online waits are what users feel; batch waits by design.
            now = time.monotonic()
            self.autoscaling.observe_queue_wait(pool, now, now - asked_at)
        return placement

    def _pool_of_worker(self, worker_id: str, pools: tuple[str, ...]) -> str | None:
        state = self.registry.get(worker_id)
        return state.identity.pool if state is not None and state.identity.pool in pools else None

    def batch_pool(self, model_version: str) -> str | None:
        """The pool a batch job of the version runs on (its chunks go to that
        pool's queue): of several, the cheapest per token with workers,
        whatever its wait (pool_choice.py); else the version's own pool."""
        pools = self.pools.version_pools.get(model_version)
        if not pools:
            return self._pool_of(model_version)
        # Price per token only: no placement is made, so nothing of
        # _cheapest_pool's (no candidates read, no choice counted in the
        # placement metrics, no queue wait observed for the autoscaler).
        costs = []
        for name in pools:
            workers = self.admission(name).workers()
            cost = usd_per_million_tokens(self.pools.pool_prices.get(name, 0.0), self._throughput(name, workers))
            costs.append((not workers, cost, name))
        return min(costs)[2]

    def _cheapest_pool(self, request: PlacementRequest, pools: tuple[str, ...]) -> str:
        """Of the pools serving the version, the cheapest per token whose
        queue keeps its SLO (pool_choice.py). A cheaper pool passed over for
        its wait feels it as a wait: its autoscaler grows it first."""
        options = []
        now = time.monotonic()
        for name in pools:
            admission = self.admission(name)
            workers = [s for s in admission.workers() if s.worker_id not in request.exclude]
            free_now = bool(admission.candidates(request, batch=request.priority >= BATCH))
            wait = admission.wait_bound.expected_wait_s(len(admission.queue), admission.nominal_slots())
            options.append(
                PoolOption(
                    pool=name,
                    price_per_hour=self.pools.pool_prices.get(name, 0.0),
                    tokens_per_s=self._throughput(name, workers),
                    workers=len(workers),
                    expected_wait_s=0.0 if free_now else wait,
                    wait_slo_s=self.pools.settings_for(name).autoscale.queue_wait_slo_s,
                )
            )
        choice = choose_pool(options, batch=request.priority >= BATCH)
        for option in options:
            if option.pool in choice.passed_over:
                self.autoscaling.observe_queue_wait(option.pool, now, option.wait_s)
        metrics.POOL_CHOICES.labels(pool=choice.pool, reason=choice.reason).inc()
        return choice.pool

    def _throughput(self, pool: str, workers: list[WorkerState]) -> float | None:
        """Tokens/s one worker of the pool delivers: the configured figure
        (a benchmark's), else the best its workers have reported while
        running (a lightly loaded worker reports less than it can do, so
        this only grows with use)."""
        configured = self.pools.pool_throughput.get(pool)
        if configured is not None:
            return configured
        reading = max((s.load.tokens_per_second for s in workers if s.load.running > 0), default=0.0)
        best = max(self._best_throughput.get(pool, 0.0), reading)
        if best <= 0:
            return None
        self._best_throughput[pool] = best
        return best

    def _why_no_worker(self, request: PlacementRequest) -> str:
        serving = self.registry.serving(request.model_version)
        if not serving:
            return f"no worker serves {request.model_version}: none has reported in"
        if request.worker_id and request.worker_id not in {s.worker_id for s in serving}:
            return f"worker {request.worker_id} does not serve {request.model_version} (or has not reported in)"
        excluded = [s.worker_id for s in serving if s.worker_id in request.exclude]
        not_accepting = [
            s.worker_id
            for s in serving
            if s.worker_id not in request.exclude and (not request.worker_id or s.worker_id == request.worker_id)
        ]
        parts = []
        if excluded:
            parts.append(f"already tried {', '.join(excluded)}")
        if not_accepting:
            parts.append(f"not accepting (stale, unhealthy or draining): {', '.join(not_accepting)}")
        return f"no worker available for {request.model_version}: " + "; ".join(parts)

    def release(
        self, lease_id: str, *, ttft_s: float | None = None, served: bool = False, used: bool = True
    ) -> LeaseRecord | None:
        """Give a lease back; `served`: its request went well, which says
        the worker is alive even when its load reports come late; `used`:
        work ran on it (False: given back unused, its hold time not counted)."""
        lease = self.leases.get(lease_id)
        if lease is None:
            return None
        if served:
            self._note_alive(lease.worker_id)
        if ttft_s is not None:
            self.autoscaling.observe_ttft(lease.pool, time.monotonic(), ttft_s)
        if used and lease.uncounted_wait is not None and lease.uncounted_wait[0] < BATCH:
            self.autoscaling.observe_queue_wait(lease.pool, time.monotonic(), lease.uncounted_wait[1])
        return self.admission(lease.pool).release(lease, used=used)

    def renew(self, lease_id: str) -> LeaseRecord | None:
        return self.leases.renew(lease_id)

    def _note_alive(self, worker_id: str) -> None:
        state = self.registry.get(worker_id)
        if state is not None:
            state.alive_at = time.monotonic()

    # --- workers -------------------------------------------------------------

    def report(self, identity: WorkerIdentity, load: LoadSnapshot, *, draining: bool) -> WorkerState:
        state = self.registry.report(identity, load, draining=draining)
        metrics.WORKERS.set(len(self.registry))
        self._kick_all()
        return state

    def worker_gone(self, worker_id: str) -> None:
        state = self.registry.remove(worker_id)
        if state is not None:
            dropped = self.leases.drop_worker(state)
            metrics.WORKERS.set(len(self.registry))
            log.info("worker %s gone (%d leases dropped)", worker_id, dropped)
            self._kick_all()

    # --- housekeeping ----------------------------------------------------

    def sweep(self) -> None:
        """Drop stale workers and expired leases, fail orphaned waiters,
        refresh the gauges."""
        for state in self.registry.drop_stale():
            self.leases.drop_worker(state)
            metrics.WORKERS_DROPPED.inc()
            log.warning(
                "worker %s dropped: no sign of life for %.1fs (last report %.1fs ago)",
                state.worker_id,
                state.silent_s(),
                state.age_s(),
            )
        for lease in self.leases.expired():
            # Its holder vanished: whether it was used is not known.
            self.admission(lease.pool).release(lease, used=False)
            metrics.LEASES_EXPIRED.labels(pool=lease.pool).inc()
            log.warning("lease %s on %s expired (request %s)", lease.lease_id, lease.worker_id, lease.request_id)
        now = time.monotonic()
        for admission in self._admissions.values():
            admission.fail_orphans(now)
            admission.refresh_gauges()
        readings = {pool: self._reading(pool) for pool in self.pool_names()}
        shared = self._shared_sizing(readings, now)
        for pool, reading in readings.items():
            self._autoscale_reading(pool, now, reading, shared.get(pool))
        metrics.WORKERS.set(len(self.registry))
        self._kick_all()

    def kick(self) -> None:
        """Something outside changed what fits (e.g. this replica's share):
        run every pool's scheduling step."""
        self._kick_all()

    # --- autoscaling -------------------------------------------------------

    def _reading(self, pool: str) -> tuple[int, int, int, float]:
        """Workers, queued, leased and slots per worker of a pool, as its
        autoscaler reads them."""
        admission = self.admission(pool)
        workers = admission.workers()
        # Workers that take new work: a draining (retired) or stale one holds
        # no slots any more, and counting it would halve the slots per
        # worker and ask it back (seen with vLLM: a flap 9 s after a
        # scale-down).
        now = time.monotonic()
        accepting = [s for s in workers if self.registry.accepting(s, now)]
        # What a worker holds when busy (capacity() is what it takes now: it
        # shrinks while the engine queues, which is no reason to want more).
        per_worker = (
            admission.nominal_slots() / len(accepting) if accepting else float(admission.settings.default_worker_slots)
        )
        # With several scheduler replicas each sees only its own queue and
        # leases. Callers spread their Places evenly over the replicas, so
        # the pool's queue is about this one's times the replicas alive, and
        # the busy slots are ours plus the others' work as engines report it.
        replicas = self.registry.replicas_live()
        queued = len(admission.queue) * replicas
        leased = sum(s.leases if replicas == 1 else s.outstanding for s in workers)
        return len(accepting), queued, leased, per_worker

    def _shared_sizing(self, readings: dict[str, tuple[int, int, int, float]], now: float) -> dict[str, SharedSizing]:
        """Pools serving a version together are sized together, cheapest
        first (spill_sizing.py). A pool in more than one such group sizes
        alone."""
        groups = {tuple(pools) for pools in self.pools.version_pools.values()}
        membership: dict[str, int] = {}
        for group in groups:
            for pool in group:
                membership[pool] = membership.get(pool, 0) + 1
        shared: dict[str, SharedSizing] = {}
        for group in groups:
            if any(membership[pool] > 1 for pool in group):
                continue
            members = []
            for pool in sorted(group, key=self._usd_per_million_tokens):
                scaling = self.pools.settings_for(pool).autoscale
                workers, queued, leased, per_worker = readings.get(pool) or self._reading(pool)
                decision = self.autoscaling.decision(pool, 0)
                members.append(
                    GroupMember(
                        pool=pool,
                        demand=float(queued + leased),
                        carries_at_max=scaling.max_workers * per_worker * scaling.target_utilisation,
                        at_max=not scaling.enabled or decision.desired >= scaling.max_workers,
                        # Within their cold start only: workers that never
                        # come (no capacity to start them) must not keep the
                        # dear pool waiting for good.
                        starting=self.autoscaling.workers_coming(pool, now, workers),
                    )
                )
            shared.update(share_demand(members))
        return shared

    def _usd_per_million_tokens(self, pool: str) -> tuple[float, str]:
        price = self.pools.pool_prices.get(pool, 0.0)
        return usd_per_million_tokens(price, self._throughput(pool, self.admission(pool).workers())), pool

    def autoscale(self, pool: str, now: float, *, shared: SharedSizing | None = None) -> Decision:
        """A new reading of the pool for its worker-count decision; `shared`:
        its share of a group's demand, when it serves a version with others."""
        return self._autoscale_reading(pool, now, self._reading(pool), shared)

    def _autoscale_reading(
        self, pool: str, now: float, reading: tuple[int, int, int, float], shared: SharedSizing | None
    ) -> Decision:
        workers, queued, leased, per_worker = reading
        decision = self.autoscaling.evaluate(
            pool,
            now=now,
            workers=workers,
            queued=queued,
            leased=leased,
            slots_per_worker=per_worker,
            sized_demand=None if shared is None else shared.demand,
            defer_to_cheaper=shared is not None and shared.defer_to_cheaper,
        )
        metrics.DESIRED_WORKERS.labels(pool=pool).set(decision.desired)
        if decision.changed:
            metrics.AUTOSCALE_CHANGES.labels(pool=pool).inc()
        return decision

    def _kick_all(self) -> None:
        for admission in self._admissions.values():
            admission.kick()

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_interval_s)
            try:
                self.sweep()
            except Exception:
                log.exception("scheduler sweep failed")
