"""The Router servicer: the public gRPC API. Validates at the door, sends
how-it-was-served metadata, and delegates to the flows; batch and file
RPCs go to the scheduler (through BatchForwarder, as the HTTP gateway's
do), cache invalidation to the cache."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import grpc
import grpc.aio

from headrace.models.registry import ModelRegistry
from headrace.request_rules.served_by import served_by_headers
from headrace.request_rules.validation import validate_embed_request, validate_generate_request
from headrace.runtime.channels import call_options
from headrace.runtime.config import Settings
from headrace.runtime.errors import PermissionDenied, Unimplemented
from headrace.runtime.request_context import current_request_id, current_tenant
from headrace.v1 import (
    batch_pb2,
    cache_pb2,
    cache_pb2_grpc,
    generation_pb2,
    models_pb2,
    router_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
)
from services.router.batch_forwarding import BatchForwarder
from services.router.flow_protocols import Embedding, Generation
from services.router.routing.layer import RoutingLayer
from services.router.routing.reload import ConfigReloader
from services.router.routing_views import annotate_models

log = logging.getLogger(__name__)

_TASKS = {"generate": models_pb2.MODEL_TASK_GENERATE, "embed": models_pb2.MODEL_TASK_EMBED}


class RouterServicer(router_pb2_grpc.RouterServicer):
    def __init__(
        self,
        *,
        settings: Settings,
        registry: ModelRegistry,
        generation: Generation,
        embedding: Embedding,
        scheduler: scheduler_pb2_grpc.SchedulerStub,
        batches: BatchForwarder,
        cache: cache_pb2_grpc.CacheStub,
        routing: RoutingLayer | None = None,
        reloader: ConfigReloader | None = None,
    ) -> None:
        self._settings = settings
        self._routing = routing
        self._reloader = reloader
        self._registry = registry
        self._generation = generation
        self._embedding = embedding
        self._scheduler = scheduler
        self._batches = batches
        self._cache = cache

    async def Generate(
        self, request: generation_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> generation_pb2.GenerateResponse:
        validate_generate_request(request, self._settings.limits)
        response = await self._generation.complete(request, tenant=current_tenant(), request_id=current_request_id())
        await context.send_initial_metadata(served_by_headers(response.request_id, response.route))
        return response

    async def GenerateStream(
        self, request: generation_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[generation_pb2.GenerateStreamResponse]:
        validate_generate_request(request, self._settings.limits)
        request_id = current_request_id()
        first = True
        async for chunk in self._generation.stream(request, tenant=current_tenant(), request_id=request_id):
            if first:
                first = False
                await context.send_initial_metadata(served_by_headers(request_id, chunk.route))
            yield chunk

    async def Embed(
        self, request: generation_pb2.EmbedRequest, context: grpc.aio.ServicerContext
    ) -> generation_pb2.EmbedResponse:
        validate_embed_request(request, self._settings.limits)
        request_id = current_request_id()
        response = await self._embedding.embed(request, tenant=current_tenant(), request_id=request_id)
        await context.send_initial_metadata(served_by_headers(request_id, response.route))
        return response

    async def ListModels(
        self, request: models_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> models_pb2.ListModelsResponse:
        ready = await self._ready_workers_by_pool()
        listing = models_pb2.ListModelsResponse(
            models=[
                models_pb2.ModelInfo(
                    id=entry.id,
                    resolves_to=entry.resolution.model_version,
                    alias=entry.alias,
                    task=_TASKS[entry.task],
                    pool=entry.resolution.pool,
                    engine=entry.resolution.engine,
                    deprecated=entry.deprecated,
                    replaced_by=entry.replaced_by,
                    price_per_hour=entry.resolution.price_per_hour,
                    ready_workers=ready.get(entry.resolution.pool, 0),
                    context_length=entry.context_length,
                    created_at=entry.created_at,
                )
                for entry in self._registry.entries(include_deprecated=request.include_deprecated)
            ]
        )
        if self._routing is not None:
            await annotate_models(list(listing.models), self._routing, ready_workers=ready)
        return listing

    async def ReloadConfig(
        self, request: models_pb2.ReloadConfigRequest, context: grpc.aio.ServicerContext
    ) -> models_pb2.ReloadConfigResponse:
        if self._reloader is None:
            raise Unimplemented("this router has no config file to reload")
        tenant = current_tenant()
        admins = self._reloader.current.routing.admin_tenants
        # Open dev mode (no keys) only listens on loopback: anyone there may reload.
        if self._settings.auth_enabled and tenant not in admins:
            raise PermissionDenied(f"tenant {tenant!r} may not reload the config (routing.admin_tenants)")
        result = self._reloader.reload(f"ReloadConfig by {tenant}")
        return models_pb2.ReloadConfigResponse(
            changed=result.changed, config_sha256=result.digest, changes=list(result.changes)
        )

    async def _ready_workers_by_pool(self) -> dict[str, int]:
        try:
            listing = await self._scheduler.ListWorkers(scheduler_pb2.ListWorkersRequest(), **call_options(timeout=2.0))
        except grpc.aio.AioRpcError as exc:
            # The registry is still worth showing; readiness is unknown.
            log.warning("scheduler unreachable for ListModels (%s)", exc.code().name)
            return {}
        ready: dict[str, int] = {}
        for worker in listing.workers:
            if worker.accepting:
                ready[worker.info.pool] = ready.get(worker.info.pool, 0) + 1
        return ready

    # Batch jobs and files belong to the scheduler: the same forwarder as
    # the HTTP gateway's /v1/batches and /v1/files (the tenant the
    # interceptor authenticated travels in x-headrace-tenant metadata).

    async def SubmitBatch(
        self, request: batch_pb2.SubmitBatchRequest, context: grpc.aio.ServicerContext
    ) -> batch_pb2.BatchJob:
        return await self._batches.submit(request)

    async def GetBatch(
        self, request: batch_pb2.GetBatchRequest, context: grpc.aio.ServicerContext
    ) -> batch_pb2.BatchJob:
        return await self._batches.get(request)

    async def CancelBatch(
        self, request: batch_pb2.CancelBatchRequest, context: grpc.aio.ServicerContext
    ) -> batch_pb2.BatchJob:
        return await self._batches.cancel(request)

    async def ListBatches(
        self, request: batch_pb2.ListBatchesRequest, context: grpc.aio.ServicerContext
    ) -> batch_pb2.ListBatchesResponse:
        return await self._batches.list(request)

    async def StreamBatchResults(
        self, request: batch_pb2.StreamBatchResultsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[batch_pb2.BatchResult]:
        async for result in self._batches.stream_results(request):
            yield result

    async def UploadFile(
        self, request: batch_pb2.UploadFileRequest, context: grpc.aio.ServicerContext
    ) -> batch_pb2.FileInfo:
        return await self._batches.upload_file(request)

    async def GetFile(self, request: batch_pb2.GetFileRequest, context: grpc.aio.ServicerContext) -> batch_pb2.FileInfo:
        return await self._batches.get_file(request)

    async def GetFileContent(
        self, request: batch_pb2.GetFileContentRequest, context: grpc.aio.ServicerContext
    ) -> batch_pb2.FileContent:
        return await self._batches.file_content(request)

    async def DeleteFile(
        self, request: batch_pb2.DeleteFileRequest, context: grpc.aio.ServicerContext
    ) -> batch_pb2.DeleteFileResponse:
        return await self._batches.delete_file(request)

    async def InvalidateCache(
        self, request: cache_pb2.InvalidateRequest, context: grpc.aio.ServicerContext
    ) -> cache_pb2.InvalidateResponse:
        scoped = cache_pb2.InvalidateRequest()
        scoped.CopyFrom(request)
        # A tenant may only drop its own entries, whatever it asks for.
        scoped.tenant = current_tenant()
        result: cache_pb2.InvalidateResponse = await self._cache.Invalidate(scoped, **call_options())
        return result
