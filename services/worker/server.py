"""The Worker servicer: translate protos, delegate to the engine, and make
sure a cancelled call frees the engine's sequence."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator

import grpc.aio
from opentelemetry import propagate, trace

from headrace.request_rules.validation import validate_embed_request, validate_generate_request
from headrace.runtime.config import LimitSettings
from headrace.runtime.errors import HeadraceError, Internal, InvalidArgument, NotFound, Preempted, status_code_for
from headrace.runtime.request_context import request_id_var
from headrace.v1 import generation_pb2, scheduler_pb2, worker_pb2, worker_pb2_grpc
from services.worker import metrics
from services.worker.convert import delta_to_proto, generation_request_from_proto, stats_to_load
from services.worker.cost_ledger import TokenShareLedger
from services.worker.engines.base import Engine, FinishReason, Priority, abort_many
from services.worker.preemption import BatchPreemption

log = logging.getLogger(__name__)

# Rows one GenerateBatch call may carry.
MAX_ROWS_PER_CALL = 256


class WorkerServicer(worker_pb2_grpc.WorkerServicer):
    def __init__(
        self,
        engine: Engine,
        *,
        model_versions: list[str],
        limits: LimitSettings,
        tracer: trace.Tracer | None = None,
        prefill_token_weight: float = 0.25,
        preempt_batch: bool = False,
        batch_share_while_online: float = 1.0,
    ) -> None:
        self._engine = engine
        # Engine time by token share, shared by every request on this engine.
        self._ledger = TokenShareLedger(prefill_token_weight=prefill_token_weight)
        self._tracer = tracer or trace.get_tracer(__name__)
        self._model_versions = frozenset(model_versions)
        self._limits = limits
        # Generate calls in flight that are not batch rows: batch consumers
        # make room for them.
        self._online = 0
        # Stop a preemptible batch row when an online request finds the
        # engine full (the pool's online_preempts_batch).
        self._preempt_batch = preempt_batch
        # ... and the batch rows beyond this share of its engine.
        self._batch_share = batch_share_while_online
        self.preemption = BatchPreemption()
        # Batch rows in the engine now (preemptible or not).
        self._batch_rows = 0

    def _check_model(self, model_version: str) -> None:
        if model_version not in self._model_versions:
            raise NotFound(
                f"model version {model_version!r} is not served here; this worker serves "
                f"{', '.join(sorted(self._model_versions))}"
            )

    async def Generate(
        self, request: worker_pb2.WorkerGenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[generation_pb2.GenerateStreamResponse]:
        # Closed explicitly: a cancelled call must free the sequence now,
        # not when the inner generator is collected.
        stream = self._generate(request, whole_answer=request.whole_answer)
        try:
            async for message in stream:
                yield message
        finally:
            await stream.aclose()

    async def Complete(
        self, request: worker_pb2.WorkerGenerateRequest, context: grpc.aio.ServicerContext
    ) -> generation_pb2.GenerateStreamResponse:
        answer = await self._whole_answer(request)
        if answer is None:
            raise Internal("the engine ended the sequence without an answer")
        return answer

    async def _whole_answer(
        self, request: worker_pb2.WorkerGenerateRequest
    ) -> generation_pb2.GenerateStreamResponse | None:
        """The answer as one message (None: the engine ended without one).
        Closed explicitly: a cancelled call frees the sequence now."""
        stream = self._generate(request, whole_answer=True)
        answer: generation_pb2.GenerateStreamResponse | None = None
        try:
            # Whole answers come as one message, the last (the finish reason's).
            async for message in stream:
                answer = message
        finally:
            await stream.aclose()
        return answer

    async def GenerateBatch(
        self, request: worker_pb2.GenerateBatchRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[worker_pb2.GenerateBatchResult]:
        if not request.rows:
            raise InvalidArgument("rows: at least one")
        if len(request.rows) > MAX_ROWS_PER_CALL:
            raise InvalidArgument(f"rows: at most {MAX_ROWS_PER_CALL} per call, got {len(request.rows)}")
        ids = [row.request_id for row in request.rows]
        if len(set(ids)) != len(ids):
            raise InvalidArgument("rows: each needs its own request_id")
        ended: asyncio.Queue[worker_pb2.GenerateBatchResult] = asyncio.Queue()

        async def run(row: worker_pb2.WorkerGenerateRequest) -> None:
            # Each row is a request of its own (its task, its context): its
            # id, not the call's, on its spans and logs.
            request_id_var.set(row.request_id)
            result = worker_pb2.GenerateBatchResult(request_id=row.request_id)
            try:
                with self._tracer.start_as_current_span(
                    "worker.batch_row",
                    context=propagate.extract(dict(row.trace_context)) if row.trace_context else None,
                    attributes={"request.id": row.request_id},
                ):
                    answer = await self._whole_answer(row)
                    if answer is not None:
                        # None: left unset, the consumer asks again (an incomplete row).
                        result.answer.CopyFrom(answer)
            except HeadraceError as exc:
                result.error_code, result.error_message = status_code_for(exc).value[0], exc.message
            except Exception as exc:
                log.exception("row %s of a GenerateBatch call failed", row.request_id)
                result.error_code = grpc.StatusCode.INTERNAL.value[0]
                result.error_message = f"the worker failed on this row: {exc}"
            ended.put_nowait(result)

        # Each row on its own, as if it had its own Generate call; cancelling
        # the call cancels them (and _generate aborts their sequences).
        rows = [asyncio.create_task(run(row), name=f"batch-row:{row.request_id}") for row in request.rows]
        try:
            for _ in rows:
                yield await ended.get()
        finally:
            for task in rows:
                task.cancel()
            await asyncio.gather(*rows, return_exceptions=True)

    async def _generate(
        self, request: worker_pb2.WorkerGenerateRequest, *, whole_answer: bool
    ) -> AsyncGenerator[generation_pb2.GenerateStreamResponse, None]:
        if not request.request_id:
            raise InvalidArgument("request_id: required")
        self._check_model(request.model_version)
        validate_generate_request(request.request, self._limits)
        generation = generation_request_from_proto(request, whole_answer=whole_answer)
        online = generation.priority != Priority.BATCH
        preemptible = not online and request.preemptible and self._preempt_batch
        if online and self._preempt_batch:
            await self._make_room()
        elif preemptible:
            if self._online and self._batch_rows >= self._batch_rows_kept(self._engine.stats().capacity):
                # Online work runs here now and the batch already holds its
                # share: a row leased before the online request came (on
                # its way here when _make_room ran) is turned away as if
                # preempted, so the rows in flight cannot refill the engine
                # behind the online request.
                self.preemption.turned_away()
                raise Preempted("preempted: online work runs here and batch holds its share; retry this row")
            self.preemption.started(generation.request_id)
        self._online += online
        self._batch_rows += not online
        ledger_key = object()
        prefilled, counted = False, 0
        finished = False
        # whole_answer: deltas are held back and sent as one last message.
        held_text: list[str] = []
        held_ids: list[int] = []
        stream = self._engine.generate(generation)
        metrics.REQUESTS_IN_FLIGHT.inc()
        self._ledger.start(ledger_key)
        # The engine's part of the request, under the Generate span. Started,
        # not made current: this generator is resumed once per token, and a
        # context attached here could be detached in another one.
        engine_span = self._tracer.start_span(
            "headrace.engine.generate",
            attributes={
                "headrace.engine": self._engine.kind,
                "headrace.model_version": request.model_version,
                "headrace.priority": int(generation.priority),
            },
        )
        started = time.monotonic()
        first_token_s: float | None = None
        deltas = 0
        try:
            async for delta in stream:
                deltas += 1
                if first_token_s is None:
                    first_token_s = time.monotonic() - started
                # Deltas carry running totals where the engine knows them.
                decoded = delta.completion_tokens - counted if delta.completion_tokens else len(delta.token_ids)
                counted += decoded
                self._ledger.processed(
                    ledger_key,
                    prefill_tokens=0 if prefilled else delta.prompt_tokens - delta.cached_prompt_tokens,
                    decoded_tokens=decoded,
                )
                prefilled = True
                if (
                    preemptible
                    and delta.finish_reason is FinishReason.ABORT
                    and self.preemption.finished(generation.request_id)
                ):
                    # Already aborted (it made room): charged, not answered.
                    finished = True
                    self._ledger.finish(ledger_key)
                    engine_span.set_status(trace.Status(trace.StatusCode.ERROR, "preempted"))
                    raise Preempted("preempted: this batch row made room for online work; retry it")
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
                    engine_seconds = self._ledger.finish(ledger_key)
                    message.timing.engine_ms = engine_seconds * 1000.0
                    message.cost.engine_seconds = engine_seconds
                    if whole_answer and first_token_s is not None and (deltas > 1 or delta.completion_tokens <= 1):
                        # Tokens held back: say when the first one came, from
                        # this worker's start, so the router still knows the
                        # TTFT (an engine that answered in one piece, e.g. a
                        # unary upstream call, has none to give).
                        message.timing.ttft_ms = first_token_s * 1000.0
                        message.timing.total_ms = (time.monotonic() - started) * 1000.0
                    metrics.TOKENS.inc(delta.completion_tokens)
                    engine_span.set_attributes(
                        {
                            "headrace.prompt_tokens": delta.prompt_tokens,
                            "headrace.completion_tokens": delta.completion_tokens,
                            "headrace.cached_prompt_tokens": delta.cached_prompt_tokens,
                            "headrace.engine_seconds": engine_seconds,
                            "headrace.finish_reason": delta.finish_reason.value,
                        }
                    )
                yield message
        finally:
            if not finished:
                # Failed or cancelled: its time is still charged, to no answer.
                self._ledger.finish(ledger_key)
            if first_token_s is not None:
                engine_span.set_attribute("headrace.engine_first_token_seconds", first_token_s)
            if not finished:
                engine_span.set_status(trace.Status(trace.StatusCode.ERROR, "ended before its last token"))
            engine_span.end()
            if preemptible:
                self.preemption.finished(generation.request_id)
            self._online -= online
            self._batch_rows -= not online
            metrics.REQUESTS_IN_FLIGHT.dec()
            # Runs on completion, error and cancellation alike: closing the
            # engine's iterator frees the sequence; abort covers engines
            # that keep generating after their consumer left.
            await stream.aclose()
            if not finished:
                await self._engine.abort(request.request_id)

    def _batch_rows_kept(self, capacity: int) -> int:
        """Batch rows this worker keeps running while online work is here."""
        return max(1, math.floor(capacity * self._batch_share + 1e-9))

    async def _make_room(self) -> None:
        """An online request arrives: bring the batch rows down to the
        pool's share of the engine, and stop one more if the engine is full
        (preemption.py)."""
        stats = self._engine.stats()
        keep = self._batch_rows_kept(stats.capacity)
        engine_full = stats.running + stats.waiting >= stats.capacity
        victims = self.preemption.victims(max(self._batch_rows - keep, 1 if engine_full else 0))
        if victims:
            log.info("preempting %d batch rows for online work (%s ...)", len(victims), victims[0])
            await abort_many(self._engine, victims)

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
