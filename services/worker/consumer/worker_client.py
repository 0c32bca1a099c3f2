"""The consumer's calls to its own worker, over gRPC on loopback: one row
as a whole answer (the worker's token stream gathered up), embeddings, and
the worker's load. gRPC failures become AttemptError / WorkerUnavailable."""

from __future__ import annotations

import time

import grpc
import grpc.aio

from headrace.runtime.channels import open_channel, outgoing_metadata
from headrace.runtime.config import LimitSettings
from headrace.runtime.request_context import REQUEST_ID_KEY, TENANT_KEY
from headrace.runtime.service_certs import Role
from headrace.runtime.service_identity import ServiceIdentity
from headrace.v1 import generation_pb2, worker_pb2, worker_pb2_grpc
from services.worker.consumer.admission import WorkerLoadReading
from services.worker.consumer.attempt_errors import AttemptError, WorkerUnavailable

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
    ) -> None:
        self._channel = open_channel(address, limits, identity, server=Role.WORKER)
        self._stub = worker_pb2_grpc.WorkerStub(self._channel)
        self._worker_id = worker_id
        self._price_per_hour = price_per_hour
        self._load_timeout_s = load_timeout_s

    async def close(self) -> None:
        await self._channel.close()

    async def load(self) -> WorkerLoadReading | None:
        """The worker's load now; None when it does not answer."""
        try:
            load = await self._stub.GetLoad(worker_pb2.GetLoadRequest(), timeout=self._load_timeout_s)
        except grpc.aio.AioRpcError:
            return None
        if not load.healthy:
            return None
        return WorkerLoadReading(running=load.running, waiting=load.waiting, capacity=load.capacity, online=load.online)

    async def reachable(self) -> bool:
        return await self.load() is not None

    async def _failure(self, exc: grpc.aio.AioRpcError) -> Exception:
        code = exc.code()
        if code in _PERMANENT:
            return AttemptError(code.name.lower(), exc.details() or code.name, retryable=False)
        if code == grpc.StatusCode.UNAVAILABLE and not await self.reachable():
            return WorkerUnavailable(f"worker {self._worker_id} does not answer ({exc.details()})")
        return AttemptError(code.name.lower(), exc.details() or code.name, retryable=True)

    async def generate(
        self,
        request: generation_pb2.GenerateRequest,
        *,
        model_version: str,
        request_id: str,
        tenant: str,
        timeout_s: float,
    ) -> generation_pb2.GenerateResponse:
        started = time.monotonic()
        call = self._stub.Generate(
            worker_pb2.WorkerGenerateRequest(
                request_id=request_id,
                model_version=model_version,
                request=request,
                tenant=tenant,
                priority=generation_pb2.PRIORITY_BATCH,
                # Nobody watches a batch row's tokens arrive.
                whole_answer=True,
            ),
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
        if last is None or not last.finish_reason:
            raise AttemptError("incomplete", "the worker's stream ended without a finish reason", retryable=True)
        if last.finish_reason in (generation_pb2.FINISH_REASON_ERROR, generation_pb2.FINISH_REASON_ABORT):
            reason = generation_pb2.FinishReason.Name(last.finish_reason).removeprefix("FINISH_REASON_").lower()
            raise AttemptError(f"engine_{reason}", f"generation ended with finish reason {reason}", retryable=True)
        engine_seconds = last.cost.engine_seconds
        return generation_pb2.GenerateResponse(
            request_id=request_id,
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
