"""Where requests run: admission and placement over the worker registry,
and the leases that account for placed work. Knows nothing of gRPC."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from headrace.runtime.errors import NoWorkerAvailable
from services.scheduler import metrics
from services.scheduler.leases import LeaseRecord, LeaseTable
from services.scheduler.placement import LeastLoadPolicy, PlacementPolicy, PlacementRequest
from services.scheduler.registry import LoadSnapshot, WorkerIdentity, WorkerRegistry, WorkerState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Placement:
    lease: LeaseRecord
    endpoint: str
    policy: str
    queue_ms: float


class Dispatcher:
    def __init__(
        self,
        *,
        registry: WorkerRegistry,
        leases: LeaseTable,
        policy: PlacementPolicy | None = None,
        sweep_interval_s: float = 0.5,
    ) -> None:
        self.registry = registry
        self.leases = leases
        self._policy: PlacementPolicy = policy or LeastLoadPolicy()
        self._sweep_interval_s = sweep_interval_s
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="scheduler-sweeper")

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper

    async def place(self, request: PlacementRequest) -> Placement:
        started = time.monotonic()
        candidates = self.registry.candidates(request.model_version, request.exclude)
        if not candidates:
            raise NoWorkerAvailable(self._why_no_worker(request), retry_after_s=1.0)
        chosen = await self._policy.choose(request, candidates)
        if chosen is None:
            raise NoWorkerAvailable(f"no worker can take {request.model_version} now", retry_after_s=1.0)
        lease = self.leases.grant(
            chosen,
            request_id=request.request_id,
            model_version=request.model_version,
            tokens=request.prompt_tokens + request.max_tokens,
        )
        metrics.PLACEMENTS.labels(policy=self._policy.name).inc()
        return Placement(
            lease=lease,
            endpoint=chosen.identity.endpoint,
            policy=self._policy.name,
            queue_ms=(time.monotonic() - started) * 1000.0,
        )

    def _why_no_worker(self, request: PlacementRequest) -> str:
        serving = self.registry.serving(request.model_version)
        if not serving:
            return f"no worker serves {request.model_version}: none has reported in"
        excluded = [s.worker_id for s in serving if s.worker_id in request.exclude]
        not_accepting = [s.worker_id for s in serving if s.worker_id not in request.exclude]
        parts = []
        if excluded:
            parts.append(f"already tried {', '.join(excluded)}")
        if not_accepting:
            parts.append(f"not accepting (stale, unhealthy or draining): {', '.join(not_accepting)}")
        return f"no worker available for {request.model_version}: " + "; ".join(parts)

    def release(self, lease_id: str) -> LeaseRecord | None:
        lease = self.leases.get(lease_id)
        if lease is None:
            return None
        return self.leases.release(lease_id, self.registry.get(lease.worker_id))

    def renew(self, lease_id: str) -> LeaseRecord | None:
        return self.leases.renew(lease_id)

    def report(self, identity: WorkerIdentity, load: LoadSnapshot, *, draining: bool) -> WorkerState:
        return self.registry.report(identity, load, draining=draining)

    def worker_gone(self, worker_id: str) -> None:
        state = self.registry.remove(worker_id)
        if state is not None:
            dropped = self.leases.drop_worker(state)
            log.info("worker %s gone (%d leases dropped)", worker_id, dropped)

    def sweep(self) -> None:
        """Drop stale workers and expired leases."""
        for state in self.registry.drop_stale():
            self.leases.drop_worker(state)
            metrics.WORKERS_DROPPED.inc()
            log.warning("worker %s dropped: no report for %.1fs", state.worker_id, state.age_s())
        for lease in self.leases.expired():
            self.leases.release(lease.lease_id, self.registry.get(lease.worker_id))
            metrics.LEASES_EXPIRED.inc()
            log.warning("lease %s on %s expired (request %s)", lease.lease_id, lease.worker_id, lease.request_id)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_interval_s)
            self.sweep()
