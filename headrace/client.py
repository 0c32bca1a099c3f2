"""Typed Python clients for internal callers: `HeadraceClient` (sync) and
`AsyncHeadraceClient` (asyncio), over the Router's gRPC API.

    with HeadraceClient() as client:
        answer = client.generate("Name a river.", max_tokens=16)
        for delta in client.generate_stream("Tell me more.", max_tokens=64):
            print(delta.text, end="")

Failed calls raise the matching `headrace.runtime.errors` class (NotFound,
InvalidArgument, ResourceExhausted with retry_after_s, ...).
"""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator, Generator, Iterator, Mapping, Sequence
from typing import Any, Literal

import grpc
import grpc.aio

from headrace.runtime.errors import from_rpc_error, rpc_stream
from headrace.v1 import batch_pb2, generation_pb2, models_pb2, router_pb2_grpc

__all__ = ["DEFAULT_TARGET", "AsyncHeadraceClient", "HeadraceClient", "build_generate_request"]

DEFAULT_TARGET = "127.0.0.1:50051"
_MAX_MESSAGE_BYTES = 64 * 1024 * 1024

PriorityName = Literal["interactive", "standard", "batch"]
_PRIORITIES: dict[str, generation_pb2.Priority.ValueType] = {
    "interactive": generation_pb2.PRIORITY_INTERACTIVE,
    "standard": generation_pb2.PRIORITY_STANDARD,
    "batch": generation_pb2.PRIORITY_BATCH,
}


def build_generate_request(
    prompt: str | None = None,
    *,
    messages: Sequence[Mapping[str, str]] | None = None,
    model: str = "",
    max_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    stop: Sequence[str] = (),
    seed: int | None = None,
    priority: PriorityName | None = None,
    session_id: str = "",
    user: str = "",
    no_cache: bool = False,
    no_store: bool = False,
    tags: Sequence[str] = (),
) -> generation_pb2.GenerateRequest:
    """A GenerateRequest from keyword arguments (a prompt or chat messages)."""
    sampling = generation_pb2.SamplingParams(stop=list(stop))
    if max_tokens is not None:
        sampling.max_tokens = max_tokens
    if temperature is not None:
        sampling.temperature = temperature
    if top_p is not None:
        sampling.top_p = top_p
    if top_k is not None:
        sampling.top_k = top_k
    if seed is not None:
        sampling.seed = seed
    return generation_pb2.GenerateRequest(
        model=model,
        prompt=prompt or "",
        messages=[
            generation_pb2.ChatMessage(role=m["role"], content=m["content"], name=m.get("name", ""))
            for m in messages or ()
        ],
        sampling=sampling,
        priority=_PRIORITIES[priority] if priority else generation_pb2.PRIORITY_UNSPECIFIED,
        session_id=session_id,
        user=user,
        cache=generation_pb2.CachePolicy(no_cache=no_cache, no_store=no_store),
        tags=list(tags),
    )


def _metadata(api_key: str | None) -> tuple[tuple[str, str], ...]:
    key = api_key if api_key is not None else os.environ.get("HEADRACE_API_KEY")
    return (("authorization", f"Bearer {key}"),) if key else ()


_OPTIONS = [
    ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
]


class HeadraceClient:
    """Blocking client. `api_key` defaults to $HEADRACE_API_KEY."""

    def __init__(
        self, target: str = DEFAULT_TARGET, *, api_key: str | None = None, timeout: float | None = 120.0
    ) -> None:
        self._channel = grpc.insecure_channel(target, options=_OPTIONS)
        self._stub = router_pb2_grpc.RouterStub(self._channel)
        self._metadata = _metadata(api_key)
        self._timeout = timeout

    def __enter__(self) -> HeadraceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _unary(self, method: Any, request: Any) -> Any:
        try:
            return method(request, metadata=self._metadata, timeout=self._timeout)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    def generate(self, prompt: str | None = None, **kwargs: Any) -> generation_pb2.GenerateResponse:
        response: generation_pb2.GenerateResponse = self._unary(
            self._stub.Generate, build_generate_request(prompt, **kwargs)
        )
        return response

    def generate_stream(
        self, prompt: str | None = None, **kwargs: Any
    ) -> Generator[generation_pb2.GenerateStreamResponse, None, None]:
        yield from self.generate_stream_request(build_generate_request(prompt, **kwargs))

    def generate_stream_request(
        self, request: generation_pb2.GenerateRequest
    ) -> Generator[generation_pb2.GenerateStreamResponse, None, None]:
        """Stream the answer to a request built by hand (every field of the proto)."""
        call = self._stub.GenerateStream(request, metadata=self._metadata, timeout=self._timeout)
        try:
            yield from call
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        finally:
            # A consumer that stops early cancels the generation.
            call.cancel()

    def embed(self, texts: Sequence[str], *, model: str = "") -> generation_pb2.EmbedResponse:
        response: generation_pb2.EmbedResponse = self._unary(
            self._stub.Embed, generation_pb2.EmbedRequest(model=model, inputs=list(texts))
        )
        return response

    def list_models(self, *, include_deprecated: bool = False) -> models_pb2.ListModelsResponse:
        response: models_pb2.ListModelsResponse = self._unary(
            self._stub.ListModels, models_pb2.ListModelsRequest(include_deprecated=include_deprecated)
        )
        return response

    def reload_config(self) -> models_pb2.ReloadConfigResponse:
        """Have the router re-read its config file (admin tenants only)."""
        response: models_pb2.ReloadConfigResponse = self._unary(
            self._stub.ReloadConfig, models_pb2.ReloadConfigRequest()
        )
        return response

    def submit_batch(
        self, jsonl: bytes, *, endpoint: str = "/v1/chat/completions", metadata: Mapping[str, str] | None = None
    ) -> batch_pb2.BatchJob:
        response: batch_pb2.BatchJob = self._unary(
            self._stub.SubmitBatch,
            batch_pb2.SubmitBatchRequest(
                input_jsonl=jsonl, endpoint=endpoint, completion_window="24h", metadata=dict(metadata or {})
            ),
        )
        return response

    def get_batch(self, batch_id: str) -> batch_pb2.BatchJob:
        response: batch_pb2.BatchJob = self._unary(self._stub.GetBatch, batch_pb2.GetBatchRequest(batch_id=batch_id))
        return response

    def cancel_batch(self, batch_id: str) -> batch_pb2.BatchJob:
        response: batch_pb2.BatchJob = self._unary(
            self._stub.CancelBatch, batch_pb2.CancelBatchRequest(batch_id=batch_id)
        )
        return response

    def list_batches(self, *, limit: int = 20, after: str = "") -> batch_pb2.ListBatchesResponse:
        response: batch_pb2.ListBatchesResponse = self._unary(
            self._stub.ListBatches, batch_pb2.ListBatchesRequest(limit=limit, after=after)
        )
        return response

    def batch_results(self, batch_id: str, *, follow: bool = False) -> Iterator[batch_pb2.BatchResult]:
        call = self._stub.StreamBatchResults(
            batch_pb2.StreamBatchResultsRequest(batch_id=batch_id, follow=follow), metadata=self._metadata
        )
        try:
            yield from call
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        finally:
            call.cancel()


class AsyncHeadraceClient:
    """asyncio client. `api_key` defaults to $HEADRACE_API_KEY."""

    def __init__(
        self, target: str = DEFAULT_TARGET, *, api_key: str | None = None, timeout: float | None = 120.0
    ) -> None:
        self._channel = grpc.aio.insecure_channel(target, options=_OPTIONS)
        self._stub = router_pb2_grpc.RouterStub(self._channel)
        self._metadata = _metadata(api_key)
        self._timeout = timeout

    async def __aenter__(self) -> AsyncHeadraceClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def _unary(self, method: Any, request: Any) -> Any:
        try:
            return await method(request, metadata=self._metadata, timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from None

    async def generate(self, prompt: str | None = None, **kwargs: Any) -> generation_pb2.GenerateResponse:
        response: generation_pb2.GenerateResponse = await self._unary(
            self._stub.Generate, build_generate_request(prompt, **kwargs)
        )
        return response

    def generate_stream(
        self, prompt: str | None = None, **kwargs: Any
    ) -> AsyncGenerator[generation_pb2.GenerateStreamResponse, None]:
        return self.generate_stream_request(build_generate_request(prompt, **kwargs))

    def generate_stream_request(
        self, request: generation_pb2.GenerateRequest
    ) -> AsyncGenerator[generation_pb2.GenerateStreamResponse, None]:
        """Stream the answer to a request built by hand (every field of the
        proto): failures as HeadraceError, the call cancelled however the
        reader stops (rpc_stream)."""
        return rpc_stream(self._stub.GenerateStream(request, metadata=self._metadata, timeout=self._timeout))

    async def embed(self, texts: Sequence[str], *, model: str = "") -> generation_pb2.EmbedResponse:
        response: generation_pb2.EmbedResponse = await self._unary(
            self._stub.Embed, generation_pb2.EmbedRequest(model=model, inputs=list(texts))
        )
        return response

    async def list_models(self, *, include_deprecated: bool = False) -> models_pb2.ListModelsResponse:
        response: models_pb2.ListModelsResponse = await self._unary(
            self._stub.ListModels, models_pb2.ListModelsRequest(include_deprecated=include_deprecated)
        )
        return response

    async def reload_config(self) -> models_pb2.ReloadConfigResponse:
        response: models_pb2.ReloadConfigResponse = await self._unary(
            self._stub.ReloadConfig, models_pb2.ReloadConfigRequest()
        )
        return response

    async def submit_batch(
        self, jsonl: bytes, *, endpoint: str = "/v1/chat/completions", metadata: Mapping[str, str] | None = None
    ) -> batch_pb2.BatchJob:
        response: batch_pb2.BatchJob = await self._unary(
            self._stub.SubmitBatch,
            batch_pb2.SubmitBatchRequest(
                input_jsonl=jsonl, endpoint=endpoint, completion_window="24h", metadata=dict(metadata or {})
            ),
        )
        return response

    async def get_batch(self, batch_id: str) -> batch_pb2.BatchJob:
        response: batch_pb2.BatchJob = await self._unary(
            self._stub.GetBatch, batch_pb2.GetBatchRequest(batch_id=batch_id)
        )
        return response

    async def cancel_batch(self, batch_id: str) -> batch_pb2.BatchJob:
        response: batch_pb2.BatchJob = await self._unary(
            self._stub.CancelBatch, batch_pb2.CancelBatchRequest(batch_id=batch_id)
        )
        return response
