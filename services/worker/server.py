"""The Worker servicer: translate protos, delegate to the engine, and make
sure a cancelled call frees the engine's sequence."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

import grpc.aio

from headrace.request_rules.validation import validate_embed_request, validate_generate_request
from headrace.runtime.config import LimitSettings
from headrace.runtime.errors import InvalidArgument, NotFound
from headrace.v1 import generation_pb2, scheduler_pb2, worker_pb2, worker_pb2_grpc
from services.worker import metrics
from services.worker.convert import delta_to_proto, generation_request_from_proto, stats_to_load
from services.worker.engines.base import Engine, Priority

log = logging.getLogger(__name__)


class EngineShare:
    """The engine time a request is charged for: wall time divided by the
    sequences sharing the engine at that moment, so the shares of requests
    batched together add up to the engine's real time (and cost)."""

    def __init__(self) -> None:
        self._last = time.monotonic()
        self.seconds = 0.0

    def advance(self, running: int) -> None:
        now = time.monotonic()
        self.seconds += (now - self._last) / max(1, running)
        self._last = now


class WorkerServicer(worker_pb2_grpc.WorkerServicer):
    def __init__(self, engine: Engine, *, model_versions: list[str], limits: LimitSettings) -> None:
        self._engine = engine
        self._model_versions = frozenset(model_versions)
        self._limits = limits
        # Generate calls in flight that are not batch rows: batch consumers
        # make room for them.
        self._online = 0

    def _check_model(self, model_version: str) -> None:
        if model_version not in self._model_versions:
            raise NotFound(
                f"model version {model_version!r} is not served here; this worker serves "
                f"{', '.join(sorted(self._model_versions))}"
            )

    async def Generate(
        self, request: worker_pb2.WorkerGenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[generation_pb2.GenerateStreamResponse]:
        if not request.request_id:
            raise InvalidArgument("request_id: required")
        self._check_model(request.model_version)
        validate_generate_request(request.request, self._limits)
        generation = generation_request_from_proto(request)
        online = generation.priority != Priority.BATCH
        self._online += online
        share = EngineShare()
        finished = False
        # whole_answer: deltas are held back and sent as one last message.
        whole_answer = request.whole_answer
        held_text: list[str] = []
        held_ids: list[int] = []
        stream = self._engine.generate(generation)
        metrics.REQUESTS_IN_FLIGHT.inc()
        try:
            async for delta in stream:
                share.advance(self._engine.running)
                if whole_answer and delta.finish_reason is None:
                    held_text.append(delta.text)
                    held_ids.extend(delta.token_ids)
                    continue
                message = delta_to_proto(delta, generation.request_id)
                if held_text:
                    message.text = "".join(held_text) + message.text
                    message.token_ids[:0] = held_ids
                if delta.finish_reason is not None:
                    finished = True
                    message.timing.engine_ms = share.seconds * 1000.0
                    message.cost.engine_seconds = share.seconds
                    metrics.TOKENS.inc(delta.completion_tokens)
                yield message
        finally:
            self._online -= online
            metrics.REQUESTS_IN_FLIGHT.dec()
            # Runs on completion, error and cancellation alike: closing the
            # engine's iterator frees the sequence; abort covers engines
            # that keep generating after their consumer left.
            await stream.aclose()
            if not finished:
                await self._engine.abort(request.request_id)

    async def Embed(
        self, request: generation_pb2.EmbedRequest, context: grpc.aio.ServicerContext
    ) -> generation_pb2.EmbedResponse:
        self._check_model(request.model)
        validate_embed_request(request, self._limits)
        vectors = await self._engine.embed(list(request.inputs))
        prompt_tokens = sum(len(text.split()) for text in request.inputs)
        return generation_pb2.EmbedResponse(
            model=request.model,
            embeddings=[generation_pb2.Embedding(index=i, values=v) for i, v in enumerate(vectors)],
            usage=generation_pb2.Usage(prompt_tokens=prompt_tokens, total_tokens=prompt_tokens),
        )

    async def GetLoad(
        self, request: worker_pb2.GetLoadRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.WorkerLoad:
        load = stats_to_load(self._engine.stats(), healthy=await self._engine.health(), now_ms=int(time.time() * 1000))
        load.online = self._online
        return load

    async def Abort(
        self, request: worker_pb2.AbortRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.AbortResponse:
        return worker_pb2.AbortResponse(found=await self._engine.abort(request.request_id))
