"""The Scheduler servicer: translate protos and delegate to the Dispatcher."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import grpc.aio
from opentelemetry import trace

from headrace.runtime.config import SchedulerSettings
from headrace.runtime.errors import (
    Cancelled,
    HeadraceError,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unimplemented,
    status_code_for,
)
from headrace.runtime.request_context import remaining_s
from headrace.runtime.service_certs import Role
from headrace.runtime.service_identity import current_peer
from headrace.v1 import batch_pb2, generation_pb2, scheduler_pb2, scheduler_pb2_grpc
from services.scheduler.admission import PRIORITY_NAMES, Placement
from services.scheduler.batch_server import BatchRpcs
from services.scheduler.dispatcher import Dispatcher
from services.scheduler.placement import PlacementRequest
from services.scheduler.worker_roster import LoadSnapshot, WorkerIdentity, WorkerState

log = logging.getLogger(__name__)

# Bounds on what one PlaceRequest may carry.
MAX_PREFIX_HASHES = 256
MAX_EXCLUDED_WORKERS = 64
MAX_WORKER_ID_CHARS = 256
# Leases per ReleaseMany call (clients send at most this many at once).
MAX_RELEASES_PER_CALL = 1024
# Places per PlaceMany call.
MAX_PLACES_PER_CALL = 256
# Once one of a PlaceMany's places is decided: how long the others the same
# scheduling step decided take to reach the call (a few turns of the loop).
_SAME_STEP_S = 0.001

# Proto priority -> queue class (0 interactive, 1 standard, 2 batch);
# unspecified means standard.
_PRIORITY_CLASS = {
    generation_pb2.PRIORITY_UNSPECIFIED: 1,
    generation_pb2.PRIORITY_INTERACTIVE: 0,
    generation_pb2.PRIORITY_STANDARD: 1,
    generation_pb2.PRIORITY_BATCH: 2,
}

_NO_BATCHES = "batch jobs are off in this scheduler (it was started without a batch store)"


def identity_from_proto(info: scheduler_pb2.WorkerInfo) -> WorkerIdentity:
    if not info.worker_id or not info.endpoint:
        raise InvalidArgument("worker.worker_id and worker.endpoint: required in every load report")
    return WorkerIdentity(
        worker_id=info.worker_id,
        endpoint=info.endpoint,
        pool=info.pool,
        models=frozenset(info.models),
        engine=info.engine,
    )


def load_from_proto(load: scheduler_pb2.WorkerLoad) -> LoadSnapshot:
    return LoadSnapshot(
        running=load.running,
        waiting=load.waiting,
        capacity=load.capacity,
        kv_cache_usage=load.kv_cache_usage,
        tokens_per_second=load.tokens_per_second,
        healthy=load.healthy,
    )


def placement_from_proto(request: scheduler_pb2.PlaceRequest) -> PlacementRequest:
    if not request.request_id:
        raise InvalidArgument("request_id: required")
    if not request.model_version or "@" not in request.model_version:
        raise InvalidArgument("model_version: required, as name@version")
    if request.priority not in _PRIORITY_CLASS:
        raise InvalidArgument(f"priority: unknown value {request.priority}")
    if len(request.prefix_hashes) > MAX_PREFIX_HASHES:
        raise InvalidArgument(f"prefix_hashes: at most {MAX_PREFIX_HASHES}, got {len(request.prefix_hashes)}")
    if len(request.exclude_workers) > MAX_EXCLUDED_WORKERS:
        raise InvalidArgument(f"exclude_workers: at most {MAX_EXCLUDED_WORKERS}, got {len(request.exclude_workers)}")
    if len(request.worker_id) > MAX_WORKER_ID_CHARS:
        raise InvalidArgument(f"worker_id: at most {MAX_WORKER_ID_CHARS} characters")
    return PlacementRequest(
        request_id=request.request_id,
        model_version=request.model_version,
        tenant=request.tenant,
        priority=_PRIORITY_CLASS[request.priority],
        session_id=request.session_id,
        prefix_hashes=tuple(request.prefix_hashes),
        prompt_tokens=request.prompt_tokens,
        max_tokens=request.max_tokens,
        exclude=frozenset(request.exclude_workers),
        worker_id=request.worker_id,
        only_if_free=request.only_if_free,
    )


def worker_status(state: WorkerState, *, accepting: bool) -> scheduler_pb2.WorkerStatus:
    identity, load = state.identity, state.load
    return scheduler_pb2.WorkerStatus(
        info=scheduler_pb2.WorkerInfo(
            worker_id=identity.worker_id,
            endpoint=identity.endpoint,
            pool=identity.pool,
            models=sorted(identity.models),
            engine=identity.engine,
        ),
        load=scheduler_pb2.WorkerLoad(
            running=load.running,
            waiting=load.waiting,
            kv_cache_usage=load.kv_cache_usage,
            tokens_per_second=load.tokens_per_second,
            capacity=load.capacity,
            healthy=load.healthy,
        ),
        report_age_s=state.age_s(),
        leases=state.leases,
        accepting=accepting,
    )


def _batch_row_lease(request: scheduler_pb2.PlaceRequest) -> bool:
    return request.priority == generation_pb2.PRIORITY_BATCH and bool(request.worker_id)


class SchedulerServicer(scheduler_pb2_grpc.SchedulerServicer):
    def __init__(
        self, dispatcher: Dispatcher, settings: SchedulerSettings, *, batches: BatchRpcs | None = None
    ) -> None:
        self._dispatcher = dispatcher
        self._settings = settings
        self._batches = batches

    async def Place(
        self, request: scheduler_pb2.PlaceRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.PlaceResponse:
        peer = current_peer()
        if peer is not None and peer.role == Role.CONSUMER and not _batch_row_lease(request):
            # A batch consumer leases slots for its rows only: never online
            # capacity, never another worker's.
            raise PermissionDenied("a batch consumer may ask only for batch leases on its worker (worker_id)")
        placement = await self._dispatcher.place(placement_from_proto(request), timeout_s=remaining_s())
        lease = placement.lease
        # On the Place span: how long the request queued, and where it went.
        trace.get_current_span().set_attributes(
            {
                "headrace.queue_wait_seconds": placement.queue_ms / 1000.0,
                "headrace.worker_id": lease.worker_id,
                "headrace.placement_policy": placement.policy,
            }
        )
        return self._placed(placement)

    async def PlaceMany(
        self, request: scheduler_pb2.PlaceManyRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[scheduler_pb2.PlaceManyResponse]:
        """Batch rows' places in one call: each queued as Place queues it
        (same admission, same fairness), each outcome sent once as soon as
        it is decided; the stream ends when all have one."""
        if not request.places:
            raise InvalidArgument("places: at least one")
        if len(request.places) > MAX_PLACES_PER_CALL:
            raise InvalidArgument(f"places: {len(request.places)} in one call; at most {MAX_PLACES_PER_CALL}")
        asks = []
        for index, place in enumerate(request.places):
            if not _batch_row_lease(place):
                raise InvalidArgument(
                    f"places[{index}]: PlaceMany is for batch rows only (priority batch and a worker_id); "
                    "use Place for anything else"
                )
            asks.append(placement_from_proto(place))
        timeout_s = remaining_s()
        tasks: list[asyncio.Future[Placement]] = [
            asyncio.ensure_future(self._dispatcher.place(ask, timeout_s=timeout_s)) for ask in asks
        ]
        position = {task: index for index, task in enumerate(tasks)}
        placed = 0
        try:
            pending: set[asyncio.Future[Placement]] = set(tasks)
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                # The others that scheduling step decided reach their tasks
                # within a turn or two of the loop: one message for them all.
                await asyncio.sleep(_SAME_STEP_S)
                settled = {task for task in pending if task.done()}
                pending -= settled
                outcomes = [
                    self._outcome(position[task], task) for task in sorted(done | settled, key=position.__getitem__)
                ]
                placed += sum(outcome.HasField("placed") for outcome in outcomes)
                yield scheduler_pb2.PlaceManyResponse(outcomes=outcomes)
        finally:
            # The caller left: out of the queue; a lease granted meanwhile
            # goes back unused (admission's _abandon).
            for task in tasks:
                if not task.done():
                    task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            trace.get_current_span().set_attributes({"headrace.places": len(tasks), "headrace.placed": placed})

    async def PlaceNowMany(
        self, request: scheduler_pb2.PlaceNowManyRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.PlaceNowManyResponse:
        """A router's places beside its cache lookups, in one call: each
        decided at once (a free slot or none), in order, as Place decides it."""
        if not request.places:
            raise InvalidArgument("places: at least one")
        if len(request.places) > MAX_PLACES_PER_CALL:
            raise InvalidArgument(f"places: {len(request.places)} in one call; at most {MAX_PLACES_PER_CALL}")
        for index, place in enumerate(request.places):
            if not place.only_if_free:
                raise InvalidArgument(
                    f"places[{index}]: PlaceNowMany is for places on a slot free now only (only_if_free); "
                    "use Place for one that may queue"
                )
        outcomes = []
        timeout_s = remaining_s()
        # One after the other: none queues, so each is decided within its
        # turn (the next sees the slot it took).
        for index, place in enumerate(request.places):
            try:
                placement: Placement | BaseException = await self._dispatcher.place(
                    placement_from_proto(place), timeout_s=timeout_s
                )
            except Exception as error:
                # One place's failure is its outcome, not the call's.
                placement = error
            outcomes.append(self._decided(index, placement))
        trace.get_current_span().set_attributes(
            {"headrace.places": len(outcomes), "headrace.placed": sum(o.HasField("placed") for o in outcomes)}
        )
        return scheduler_pb2.PlaceNowManyResponse(outcomes=outcomes)

    def _outcome(self, index: int, task: asyncio.Future[Placement]) -> scheduler_pb2.PlaceOutcome:
        error: BaseException | None = Cancelled("the place was cancelled") if task.cancelled() else task.exception()
        return self._decided(index, task.result() if error is None else error)

    def _decided(self, index: int, placement: Placement | BaseException) -> scheduler_pb2.PlaceOutcome:
        if not isinstance(placement, BaseException):
            return scheduler_pb2.PlaceOutcome(index=index, placed=self._placed(placement))
        error = placement
        if not isinstance(error, HeadraceError):
            log.error("a place failed unexpectedly", exc_info=error)
            error = Internal(f"placing failed: {type(error).__name__}")
        return scheduler_pb2.PlaceOutcome(
            index=index,
            refused=scheduler_pb2.PlaceRefusal(
                code=status_code_for(error).value[0],
                message=error.message,
                retry_after_s=error.retry_after_s or 0.0,
            ),
        )

    def _placed(self, placement: Placement) -> scheduler_pb2.PlaceResponse:
        lease = placement.lease
        return scheduler_pb2.PlaceResponse(
            lease=scheduler_pb2.Lease(
                lease_id=lease.lease_id,
                worker_id=lease.worker_id,
                endpoint=placement.endpoint,
                expires_at_ms=lease.expires_at_ms,
            ),
            policy=placement.policy,
            queue_ms=placement.queue_ms,
            pool=lease.pool,
            price_per_hour=self._dispatcher.pools.pool_prices.get(lease.pool, 0.0),
        )

    async def Release(
        self, request: scheduler_pb2.ReleaseRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.ReleaseResponse:
        ttft_s = request.ttft_ms / 1000.0 if request.ttft_ms > 0 else None
        served = request.outcome == scheduler_pb2.LEASE_OUTCOME_OK
        released = self._dispatcher.release(
            request.lease_id,
            ttft_s=ttft_s,
            served=served,
            used=request.outcome != scheduler_pb2.LEASE_OUTCOME_UNUSED,
        )
        return scheduler_pb2.ReleaseResponse(released=released is not None)

    async def ReleaseMany(
        self, request: scheduler_pb2.ReleaseManyRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.ReleaseManyResponse:
        if len(request.releases) > MAX_RELEASES_PER_CALL:
            raise InvalidArgument(f"releases: {len(request.releases)} in one call; at most {MAX_RELEASES_PER_CALL}")
        return scheduler_pb2.ReleaseManyResponse(
            results=[await self.Release(release, context) for release in request.releases]
        )

    async def RenewLease(
        self, request: scheduler_pb2.RenewLeaseRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.RenewLeaseResponse:
        lease = self._dispatcher.renew(request.lease_id)
        if lease is None:
            raise NotFound(f"lease {request.lease_id!r} is unknown or expired")
        return scheduler_pb2.RenewLeaseResponse(
            lease=scheduler_pb2.Lease(
                lease_id=lease.lease_id, worker_id=lease.worker_id, expires_at_ms=lease.expires_at_ms
            )
        )

    async def ReportLoad(
        self, request_iterator: AsyncIterator[scheduler_pb2.LoadReport], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[scheduler_pb2.LoadReportAck]:
        token = object()
        state: WorkerState | None = None
        try:
            async for report in request_iterator:
                first = state is None
                _check_announced_endpoint(report.worker.endpoint)
                state = self._dispatcher.report(
                    identity_from_proto(report.worker), load_from_proto(report.load), draining=report.draining
                )
                state.stream_token = token
                if first:
                    log.info("worker %s at %s reporting in", state.worker_id, state.identity.endpoint)
                    yield scheduler_pb2.LoadReportAck(report_interval_ms=self._settings.report_interval_ms)
        finally:
            # The stream ended (worker stopped or crashed): no more work there.
            if state is not None and state.stream_token is token:
                self._dispatcher.worker_gone(state.worker_id)

    async def ListWorkers(
        self, request: scheduler_pb2.ListWorkersRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.ListWorkersResponse:
        now = time.monotonic()
        registry = self._dispatcher.registry
        states = [s for s in registry.all() if not request.pool or s.identity.pool == request.pool]
        return scheduler_pb2.ListWorkersResponse(
            workers=[worker_status(s, accepting=registry.accepting(s, now)) for s in states]
        )

    async def GetPoolStatus(
        self, request: scheduler_pb2.GetPoolStatusRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.GetPoolStatusResponse:
        pools = []
        for pool in self._dispatcher.pool_names():
            if request.pool and pool != request.pool:
                continue
            admission = self._dispatcher.admission(pool)
            workers = admission.workers()
            decision = self._dispatcher.autoscaling.decision(pool, len(workers))
            pools.append(
                scheduler_pb2.PoolStatus(
                    pool=pool,
                    workers=len(workers),
                    queued={name: admission.queue.depth(cls) for cls, name in enumerate(PRIORITY_NAMES)},
                    leased=sum(s.leases for s in workers),
                    capacity=admission.capacity(workers),
                    queue_limit=admission.queue.limit,
                    desired_workers=decision.desired,
                    desired_reason=decision.reason,
                )
            )
        return scheduler_pb2.GetPoolStatusResponse(pools=pools)

    # Batch jobs and files: BatchRpcs (batch_server.py) translates and delegates.

    def _batch(self) -> BatchRpcs:
        if self._batches is None:
            raise Unimplemented(_NO_BATCHES)
        return self._batches

    async def SubmitBatch(
        self, request: batch_pb2.SubmitBatchRequest, context: grpc.aio.ServicerContext
    ) -> batch_pb2.BatchJob:
        return await self._batch().SubmitBatch(request)

    async def GetBatch(
        self, request: batch_pb2.GetBatchRequest, context: grpc.aio.ServicerContext
    ) -> batch_pb2.BatchJob:
        return await self._batch().GetBatch(request)

    async def CancelBatch(
        self, request: batch_pb2.CancelBatchRequest, context: grpc.aio.ServicerContext
    ) -> batch_pb2.BatchJob:
        return await self._batch().CancelBatch(request)

    async def ListBatches(
        self, request: batch_pb2.ListBatchesRequest, context: grpc.aio.ServicerContext
    ) -> batch_pb2.ListBatchesResponse:
        return await self._batch().ListBatches(request)

    async def StreamBatchResults(
        self, request: batch_pb2.StreamBatchResultsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[batch_pb2.BatchResult]:
        async for result in self._batch().StreamBatchResults(request):
            yield result

    async def UploadFile(
        self, request: batch_pb2.UploadFileRequest, context: grpc.aio.ServicerContext
    ) -> batch_pb2.FileInfo:
        return await self._batch().UploadFile(request)

    async def GetFile(self, request: batch_pb2.GetFileRequest, context: grpc.aio.ServicerContext) -> batch_pb2.FileInfo:
        return await self._batch().GetFile(request)

    async def GetFileContent(
        self, request: batch_pb2.GetFileContentRequest, context: grpc.aio.ServicerContext
    ) -> batch_pb2.FileContent:
        return await self._batch().GetFileContent(request)

    async def DeleteFile(
        self, request: batch_pb2.DeleteFileRequest, context: grpc.aio.ServicerContext
    ) -> batch_pb2.DeleteFileResponse:
        return await self._batch().DeleteFile(request)


def _check_announced_endpoint(endpoint: str) -> None:
    """With service identity, a worker may announce only a host its
    certificate names: a stolen worker credential cannot draw requests to
    a machine of the thief's choosing."""
    peer = current_peer()
    if peer is not None and not peer.may_announce(endpoint):
        raise PermissionDenied(
            f"this worker's certificate does not name the host of {endpoint!r}; "
            "issue it one that does (`headrace certs issue --role worker --host HOST`)"
        )
