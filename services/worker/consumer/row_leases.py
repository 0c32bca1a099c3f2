"""A batch row runs only under a scheduler lease of the batch class.

The consumer does not decide when a row may start: for each row it asks
the scheduler (priority batch, pinned to the worker it runs beside) and
waits in the pool's queue with the online requests, where the same
admission and per-tenant fairness apply (online work first;
docs/scheduler.md, "One owner of capacity"). Rows that ask together go in
one Scheduler.PlaceMany call (place_coalescer.py). The lease is renewed
while the row runs and given back when it ends.

Asking is bounded (max_inflight_rows rows asking or running at once per
consumer). A full queue, or a place taken by online work (RESOURCE_EXHAUSTED),
is waited out and asked again; it never counts against the row. A worker
the scheduler does not know (restarting, or gone) is asked again until
down_after_s, then WorkerUnavailable hands the chunk back to the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import grpc.aio

from headrace.request_rules.token_estimate import estimate_prompt_tokens, estimate_tokens
from headrace.runtime.config import LimitSettings
from headrace.runtime.place_coalescer import PlaceCoalescer, PlaceRefused
from headrace.runtime.scheduler_replicas import SchedulerReplicas
from headrace.runtime.service_identity import ServiceIdentity
from headrace.v1 import generation_pb2, scheduler_pb2
from services.worker.consumer.attempt_errors import WorkerUnavailable
from services.worker.consumer.call_window import CallWindow

log = logging.getLogger(__name__)

# Ask again after this long when the scheduler gives no retry-after.
_RETRY_S = 0.5


@dataclass(frozen=True)
class RowAsk:
    """What the scheduler needs to know of a row."""

    request_id: str
    model_version: str
    tenant: str
    prompt_tokens: int = 0
    max_tokens: int = 0


@dataclass
class HeldLease:
    lease: scheduler_pb2.Lease
    # Set by the row's runner: how the row went (read at release).
    outcome: scheduler_pb2.LeaseOutcome.ValueType = scheduler_pb2.LEASE_OUTCOME_ERROR


def generate_ask(request_id: str, model_version: str, tenant: str, request: generation_pb2.GenerateRequest) -> RowAsk:
    return RowAsk(
        request_id=request_id,
        model_version=model_version,
        tenant=tenant,
        # A hint for fairness and placement.
        prompt_tokens=estimate_prompt_tokens(request),
        max_tokens=request.sampling.max_tokens if request.sampling.HasField("max_tokens") else 0,
    )


def embed_ask(request_id: str, model_version: str, tenant: str, request: generation_pb2.EmbedRequest) -> RowAsk:
    return RowAsk(
        request_id=request_id,
        model_version=model_version,
        tenant=tenant,
        prompt_tokens=estimate_tokens(sum(len(text) for text in request.inputs)),
        # Embeddings generate nothing; 1 keeps the cost at the prompt's.
        max_tokens=1,
    )


class RowLeases:
    def __init__(
        self,
        scheduler: SchedulerReplicas,
        *,
        worker_id: str,
        max_inflight: int,
        renew_margin_s: float = 10.0,
        down_after_s: float = 10.0,
        call_window_s: float = 0.002,
    ) -> None:
        self._scheduler = scheduler
        # Lease calls wait for other rows to share them, the longer the more
        # rows hold leases (call_window.py).
        self._max_inflight = max_inflight
        call_window = self.scaled_window(call_window_s)
        self._places = PlaceCoalescer(scheduler, gather_s=call_window)
        scheduler.set_release_window(call_window)
        self._worker_id = worker_id
        self._asking = asyncio.Semaphore(max_inflight)
        self._renew_margin_s = renew_margin_s
        self._down_after_s = down_after_s
        # Rows holding a lease now (for tests and metrics).
        self.held = 0

    def scaled_window(self, window_s: float) -> CallWindow:
        """`window_s` when every row that may hold a lease holds one, less in
        proportion with fewer (call_window.py)."""
        return CallWindow(window_s, held=lambda: self.held, max_rows=self._max_inflight)

    @classmethod
    def open(
        cls,
        targets: list[str],
        limits: LimitSettings,
        identity: ServiceIdentity | None,
        *,
        worker_id: str,
        max_inflight: int,
        call_window_s: float = 0.002,
    ) -> tuple[RowLeases, SchedulerReplicas]:
        """Over every scheduler replica: rows' places go to the next one in
        turn and move on when one is down (place_coalescer.py)."""
        schedulers = SchedulerReplicas(targets, limits, identity)
        leases = cls(schedulers, worker_id=worker_id, max_inflight=max_inflight, call_window_s=call_window_s)
        return leases, schedulers

    @contextlib.asynccontextmanager
    async def lease(self, ask: RowAsk) -> AsyncIterator[HeldLease]:
        """Wait for the scheduler's lease for the row; hold it (renewed)
        while the body runs; give it back however the body ends."""
        async with self._asking:
            held = HeldLease(await self._place(ask))
            self.held += 1
            renewer = asyncio.create_task(self._renew(held.lease), name=f"row-lease-renew:{held.lease.lease_id}")
            try:
                yield held
            except (asyncio.CancelledError, GeneratorExit):
                held.outcome = scheduler_pb2.LEASE_OUTCOME_CANCELLED
                raise
            finally:
                self.held -= 1
                renewer.cancel()
                await self._release(held)

    async def _place(self, ask: RowAsk) -> scheduler_pb2.Lease:
        request = scheduler_pb2.PlaceRequest(
            request_id=ask.request_id,
            model_version=ask.model_version,
            tenant=ask.tenant,
            priority=generation_pb2.PRIORITY_BATCH,
            prompt_tokens=ask.prompt_tokens,
            max_tokens=ask.max_tokens,
            worker_id=self._worker_id,
        )
        unavailable_since: float | None = None
        while True:
            try:
                response = await self._places.place(request)
                return response.lease
            except PlaceRefused as refused:
                code = refused.code
                if code == grpc.StatusCode.UNAVAILABLE:
                    # No such worker at the scheduler (restarting?), or the
                    # scheduler itself is away.
                    now = time.monotonic()
                    unavailable_since = unavailable_since or now
                    if now - unavailable_since >= self._down_after_s:
                        raise WorkerUnavailable(
                            f"no lease for worker {self._worker_id} for {self._down_after_s:.0f}s: {refused.message}"
                        ) from refused
                elif code not in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise WorkerUnavailable(
                        f"the scheduler refused a lease: {code.name}: {refused.message}"
                    ) from refused
                else:
                    unavailable_since = None
                await asyncio.sleep(_retry_after_s(refused))

    async def close(self) -> None:
        """Stop asking (rows still asking get CancelledError)."""
        places = self._places
        log.info(
            "row leases: %d places in %d PlaceMany calls, %d single Place calls",
            places.places_sent,
            places.many_calls,
            places.single_calls,
        )
        await places.close()
        # Rows ending now give their leases back at once, not after a window.
        await self._scheduler.flush_releases()

    async def _renew(self, lease: scheduler_pb2.Lease) -> None:
        expires_at = lease.expires_at_ms / 1000.0
        while True:
            await asyncio.sleep(max(1.0, expires_at - time.time() - self._renew_margin_s))
            try:
                renewed = await self._scheduler.renew(
                    scheduler_pb2.RenewLeaseRequest(lease_id=lease.lease_id), timeout=5.0
                )
            except grpc.aio.AioRpcError as exc:
                log.warning("row lease %s renewal failed (%s)", lease.lease_id, exc.code().name)
                return
            expires_at = renewed.lease.expires_at_ms / 1000.0

    async def _release(self, held: HeldLease) -> None:
        try:
            await self._scheduler.release(
                scheduler_pb2.ReleaseRequest(lease_id=held.lease.lease_id, outcome=held.outcome), timeout=5.0
            )
        except grpc.aio.AioRpcError as exc:
            # It expires on its own: the slot is not lost for long.
            log.warning("row lease %s release failed (%s); it will expire", held.lease.lease_id, exc.code().name)


def _retry_after_s(refused: PlaceRefused) -> float:
    if refused.retry_after_s is None:
        return _RETRY_S
    return min(5.0, max(_RETRY_S, refused.retry_after_s))
