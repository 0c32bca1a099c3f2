"""The consumer's calls to its own worker, over gRPC on loopback: one row
as a whole answer (the worker's token stream gathered up), embeddings, and
whether the worker answers at all. gRPC failures become AttemptError /
WorkerUnavailable (a preempted row: AttemptError "preempted")."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import grpc
import grpc.aio
from opentelemetry import propagate

from headrace.runtime.channels import open_channel, outgoing_metadata
from headrace.runtime.config import LimitSettings
from headrace.runtime.errors import status_code_numbered
from headrace.runtime.request_context import REQUEST_ID_KEY, TENANT_KEY
from headrace.runtime.service_certs import Role
from headrace.runtime.service_identity import ServiceIdentity
from headrace.v1 import generation_pb2, worker_pb2, worker_pb2_grpc
from services.worker.consumer.attempt_errors import PREEMPTED, AttemptError, WorkerUnavailable
from services.worker.consumer.row_calls import RowCalls

# The row itself is at fault: another attempt would fail the same way.
_PERMANENT = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.OUT_OF_RANGE,
    }
)


class WorkerClient:
    def __init__(
        self,
        address: str,
        limits: LimitSettings,
        *,
        worker_id: str,
        price_per_hour: float,
        identity: ServiceIdentity | None = None,
        load_timeout_s: float = 1.0,
        rows_per_call: int = 1,
        call_timeout_s: float = 600.0,
        call_window_s: float | Callable[[], float] = 0.005,
    ) -> None:
        self._channel = open_channel(address, limits, identity, server=Role.WORKER)
        self._stub = worker_pb2_grpc.WorkerStub(self._channel)
        # Rows ready together share a GenerateBatch call (1: a Generate call per row).
        self.rows = (
            RowCalls(self._stub, max_rows=rows_per_call, timeout_s=call_timeout_s, window_s=call_window_s)
            if rows_per_call > 1
            else None
        )
        self._worker_id = worker_id
        self._price_per_hour = price_per_hour
        self._load_timeout_s = load_timeout_s

    async def close(self) -> None:
        if self.rows is not None:
            await self.rows.close()
        await self._channel.close()

    async def reachable(self) -> bool:
        """Whether the worker answers and says it is healthy."""
        try:
            load = await self._stub.GetLoad(worker_pb2.GetLoadRequest(), timeout=self._load_timeout_s)
        except grpc.aio.AioRpcError:
            return False
        return bool(load.healthy)

    async def _failure(self, exc: grpc.aio.AioRpcError) -> Exception:
        return await self._failure_of(exc.code(), exc.details() or exc.code().name)

    async def _failure_of(self, code: grpc.StatusCode, details: str) -> Exception:
        if code == grpc.StatusCode.ABORTED:
            return AttemptError(PREEMPTED, details, retryable=True)
        if code in _PERMANENT:
            return AttemptError(code.name.lower(), details, retryable=False)
        if code == grpc.StatusCode.UNAVAILABLE and not await self.reachable():
            return WorkerUnavailable(f"worker {self._worker_id} does not answer ({details})")
        return AttemptError(code.name.lower(), details, retryable=True)

    async def generate(
        self,
        request: generation_pb2.GenerateRequest,
        *,
        model_version: str,
        request_id: str,
        tenant: str,
        timeout_s: float,
        preemptible: bool = False,
    ) -> generation_pb2.GenerateResponse:
        started = time.monotonic()
        row = worker_pb2.WorkerGenerateRequest(
            request_id=request_id,
            model_version=model_version,
            request=request,
            tenant=tenant,
            priority=generation_pb2.PRIORITY_BATCH,
            # Nobody watches a batch row's tokens arrive.
            whole_answer=True,
            preemptible=preemptible,
        )
        if self.rows is not None:
            # The row's own trace, whichever call carries it.
            propagate.inject(row.trace_context)
            try:
                result = await asyncio.wait_for(self.rows.run(row), timeout=timeout_s)
            except grpc.aio.AioRpcError as exc:
                raise await self._failure(exc) from exc
            except TimeoutError as exc:
                raise AttemptError("deadline_exceeded", f"no answer within {timeout_s:g}s", retryable=True) from exc
            if result.error_code:
                raise await self._failure_of(status_code_numbered(result.error_code), result.error_message)
            answer = result.answer if result.HasField("answer") else None
            return self._response(row, answer, [result.answer.text], list(result.answer.token_ids), started)
        call = self._stub.Generate(
            row,
            metadata=outgoing_metadata([(REQUEST_ID_KEY, request_id), (TENANT_KEY, tenant)]),
            timeout=timeout_s,
        )
        text: list[str] = []
        token_ids: list[int] = []
        last: generation_pb2.GenerateStreamResponse | None = None
        try:
            async for delta in call:
                text.append(delta.text)
                token_ids.extend(delta.token_ids)
                last = delta
        except grpc.aio.AioRpcError as exc:
            raise await self._failure(exc) from exc
        finally:
            call.cancel()
        return self._response(row, last, text, token_ids, started)

    def _response(
        self,
        row: worker_pb2.WorkerGenerateRequest,
        last: generation_pb2.GenerateStreamResponse | None,
        text: list[str],
        token_ids: list[int],
        started: float,
    ) -> generation_pb2.GenerateResponse:
        if last is None or not last.finish_reason:
            raise AttemptError("incomplete", "the worker's stream ended without a finish reason", retryable=True)
        if last.finish_reason in (generation_pb2.FINISH_REASON_ERROR, generation_pb2.FINISH_REASON_ABORT):
            reason = generation_pb2.FinishReason.Name(last.finish_reason).removeprefix("FINISH_REASON_").lower()
            raise AttemptError(f"engine_{reason}", f"generation ended with finish reason {reason}", retryable=True)
        engine_seconds = last.cost.engine_seconds
        model_version = row.model_version
        return generation_pb2.GenerateResponse(
            request_id=row.request_id,
            model=model_version,
            text="".join(text),
            token_ids=token_ids,
            finish_reason=last.finish_reason,
            usage=last.usage,
            route=generation_pb2.RouteInfo(
                model_version=model_version,
                reason="batch",
                cache=generation_pb2.CACHE_OUTCOME_BYPASS,
                worker_id=self._worker_id,
                attempts=1,
            ),
            timing=generation_pb2.Timing(
                total_ms=(time.monotonic() - started) * 1000.0, engine_ms=last.timing.engine_ms
            ),
            cost=generation_pb2.Cost(engine_seconds=engine_seconds, usd=engine_seconds * self._price_per_hour / 3600.0),
        )

    async def embed(
        self, request: generation_pb2.EmbedRequest, *, request_id: str, tenant: str, timeout_s: float
    ) -> generation_pb2.EmbedResponse:
        try:
            response: generation_pb2.EmbedResponse = await self._stub.Embed(
                request,
                metadata=outgoing_metadata([(REQUEST_ID_KEY, request_id), (TENANT_KEY, tenant)]),
                timeout=timeout_s,
            )
        except grpc.aio.AioRpcError as exc:
            raise await self._failure(exc) from exc
        return response
