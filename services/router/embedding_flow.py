"""One embedding request: resolve the model, place it, call the worker."""

from __future__ import annotations

import grpc.aio

from headrace.models.registry import ModelRegistry
from headrace.request_rules.token_estimate import estimate_tokens
from headrace.runtime.channels import ChannelPool, call_options
from headrace.runtime.errors import from_rpc_error
from headrace.v1 import generation_pb2, scheduler_pb2, worker_pb2_grpc
from services.router.leasing import Leasing


class EmbeddingFlow:
    def __init__(self, *, registry: ModelRegistry, leasing: Leasing, workers: ChannelPool) -> None:
        self._registry = registry
        self._leasing = leasing
        self._workers = workers

    async def embed(
        self, request: generation_pb2.EmbedRequest, *, tenant: str, request_id: str
    ) -> generation_pb2.EmbedResponse:
        resolution = self._registry.resolve(request.model, task="embed")
        placed = await self._leasing.place(
            scheduler_pb2.PlaceRequest(
                request_id=request_id,
                model_version=resolution.model_version,
                tenant=tenant,
                prompt_tokens=estimate_tokens(sum(len(text) for text in request.inputs)),
            )
        )
        forwarded = generation_pb2.EmbedRequest()
        forwarded.CopyFrom(request)
        forwarded.model = resolution.model_version
        async with self._leasing.hold(placed.lease) as use:
            try:
                response: generation_pb2.EmbedResponse = await worker_pb2_grpc.WorkerStub(
                    self._workers.get(placed.lease.endpoint)
                ).Embed(forwarded, **call_options())
            except grpc.aio.AioRpcError as exc:
                raise from_rpc_error(exc) from exc
            use.outcome = scheduler_pb2.LEASE_OUTCOME_OK
            use.usage = response.usage
        response.route.CopyFrom(
            generation_pb2.RouteInfo(
                model_version=resolution.model_version,
                reason=resolution.reason,
                cache=generation_pb2.CACHE_OUTCOME_BYPASS,
                worker_id=placed.lease.worker_id,
                attempts=1,
                deprecation=resolution.deprecation,
            )
        )
        return response
