"""What the router's front doors (the gRPC servicer, the HTTP gateway) need
of the flows behind them. GenerationFlow and EmbeddingFlow provide these,
and so do the wrappers that meter them (rate_limited_flows.py)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Protocol, TypeVar

from headrace.v1 import generation_pb2

T = TypeVar("T")


class Generation(Protocol):
    def stream(
        self, request: generation_pb2.GenerateRequest, *, tenant: str, request_id: str
    ) -> AsyncIterator[generation_pb2.GenerateStreamResponse]:
        """Deltas of the answer; the first carries model and route, the last
        finish reason and usage."""
        ...

    async def complete(
        self, request: generation_pb2.GenerateRequest, *, tenant: str, request_id: str
    ) -> generation_pb2.GenerateResponse: ...


class Embedding(Protocol):
    async def embed(
        self, request: generation_pb2.EmbedRequest, *, tenant: str, request_id: str
    ) -> generation_pb2.EmbedResponse: ...


@contextlib.asynccontextmanager
async def closing(stream: AsyncIterator[T]) -> AsyncIterator[AsyncIterator[T]]:
    """Close an abandoned stream at once (its finally blocks run now: the
    worker call is cancelled), not whenever it is garbage-collected."""
    try:
        yield stream
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()
