"""The router's side of placement: ask the scheduler for a lease, keep it
alive while the request runs, and give it back (off the critical path)
however the request ends."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc.aio

from headrace.runtime.background import BackgroundTasks
from headrace.runtime.channels import call_options
from headrace.runtime.scheduler_replicas import SchedulerReplicas
from headrace.v1 import generation_pb2, scheduler_pb2
from services.router.places_now import PlacesNow

log = logging.getLogger(__name__)


@dataclass
class LeaseUse:
    """How the leased request went; read when the lease is given back."""

    lease: scheduler_pb2.Lease
    outcome: scheduler_pb2.LeaseOutcome.ValueType = scheduler_pb2.LEASE_OUTCOME_ERROR
    usage: generation_pb2.Usage | None = None
    # Seconds from the request's start to its first token, once it came.
    ttft_s: float | None = None


class Leasing:
    def __init__(
        self,
        scheduler: SchedulerReplicas,
        background: BackgroundTasks,
        *,
        renew_margin_s: float,
    ) -> None:
        self._scheduler = scheduler
        self._background = background
        self._renew_margin_s = renew_margin_s
        self._places_now = PlacesNow(scheduler, give_back=self.give_back)

    async def place(self, request: scheduler_pb2.PlaceRequest) -> scheduler_pb2.PlaceResponse:
        """Raises grpc.aio.AioRpcError, or HeadraceError for a place on a
        slot free now that the scheduler refused."""
        if request.only_if_free:
            # Beside a cache lookup: coalesced with those asked meanwhile.
            return await self._places_now.place(request, options=call_options)
        # Any replica; one that is down or dies while the call waits in its
        # queue is skipped (scheduler_replicas.py).
        return await self._scheduler.place(request, options=call_options)

    @contextlib.asynccontextmanager
    async def hold(self, lease: scheduler_pb2.Lease) -> AsyncIterator[LeaseUse]:
        use = LeaseUse(lease=lease)
        renewer = asyncio.create_task(self._renew(lease), name=f"lease-renew:{lease.lease_id}")
        try:
            yield use
        except (asyncio.CancelledError, GeneratorExit):
            # Unless its answer was already whole (the caller stopped at the last chunk).
            if use.outcome != scheduler_pb2.LEASE_OUTCOME_OK:
                use.outcome = scheduler_pb2.LEASE_OUTCOME_CANCELLED
            raise
        finally:
            renewer.cancel()
            self._background.spawn(self._release(use), name=f"lease-release:{lease.lease_id}")

    def give_back(self, lease: scheduler_pb2.Lease) -> None:
        """A lease that will not be used (a cache hit answered instead): back
        to the scheduler now, off the critical path, said unused (its hold
        time is not the engine's)."""
        use = LeaseUse(lease=lease, outcome=scheduler_pb2.LEASE_OUTCOME_UNUSED)
        self._background.spawn(self._release(use), name=f"lease-release:{lease.lease_id}")

    async def _renew(self, lease: scheduler_pb2.Lease) -> None:
        expires_at = lease.expires_at_ms / 1000.0
        while True:
            await asyncio.sleep(max(1.0, expires_at - time.time() - self._renew_margin_s))
            try:
                renewed = await self._scheduler.renew(
                    scheduler_pb2.RenewLeaseRequest(lease_id=lease.lease_id), **call_options(timeout=5.0)
                )
            except grpc.aio.AioRpcError as exc:
                log.warning("lease %s renewal failed (%s)", lease.lease_id, exc.code().name)
                return
            expires_at = renewed.lease.expires_at_ms / 1000.0

    async def _release(self, use: LeaseUse) -> None:
        try:
            await self._scheduler.release(
                scheduler_pb2.ReleaseRequest(
                    lease_id=use.lease.lease_id,
                    outcome=use.outcome,
                    usage=use.usage,
                    ttft_ms=0.0 if use.ttft_s is None else use.ttft_s * 1000.0,
                ),
                **call_options(timeout=5.0),
            )
        except grpc.aio.AioRpcError as exc:
            # The lease expires on its own; the capacity is not lost for long.
            log.warning("lease %s release failed (%s); it will expire", use.lease.lease_id, exc.code().name)
