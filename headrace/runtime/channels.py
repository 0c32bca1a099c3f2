"""Client channels for calls between services: bounded message sizes,
keepalive, tracing, and propagation of the request id, tenant and
deadline of the request being served."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import grpc
import grpc.aio
from opentelemetry.instrumentation.grpc import aio_client_interceptors
from opentelemetry.trace import TracerProvider

from headrace.runtime.config import LimitSettings
from headrace.runtime.request_context import REQUEST_ID_KEY, TENANT_KEY, deadline_var, request_id_var, tenant_var


def channel_options(limits: LimitSettings) -> list[tuple[str, Any]]:
    """Options shared by servers and channels: message sizes are bounded,
    never unlimited; keepalive notices a dead peer within seconds."""
    return [
        ("grpc.max_send_message_length", limits.max_message_bytes),
        ("grpc.max_receive_message_length", limits.max_message_bytes),
        ("grpc.keepalive_time_ms", 10_000),
        ("grpc.keepalive_timeout_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]


def outgoing_metadata(metadata: Sequence[tuple[str, str | bytes]] | None = None) -> list[tuple[str, str | bytes]]:
    """Metadata for a call made while serving a request: the caller's plus
    the request id and tenant, unless the caller set them."""
    result = list(metadata or ())
    present = {key for key, _ in result}
    request_id = request_id_var.get()
    if request_id and REQUEST_ID_KEY not in present:
        result.append((REQUEST_ID_KEY, request_id))
    tenant = tenant_var.get()
    if tenant and TENANT_KEY not in present:
        result.append((TENANT_KEY, tenant))
    return result


def propagated_timeout(timeout: float | None) -> float | None:
    """The call's timeout, shortened to what is left of the request's deadline."""
    deadline = deadline_var.get()
    if deadline == float("inf"):
        return timeout
    remaining = max(0.0, deadline - time.monotonic())
    return remaining if timeout is None else min(timeout, remaining)


class _PropagationInterceptor(
    grpc.aio.UnaryUnaryClientInterceptor,
    grpc.aio.UnaryStreamClientInterceptor,
    grpc.aio.StreamUnaryClientInterceptor,
    grpc.aio.StreamStreamClientInterceptor,
):
    @staticmethod
    def _details(details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        return grpc.aio.ClientCallDetails(
            method=details.method,
            timeout=propagated_timeout(details.timeout),
            metadata=grpc.aio.Metadata(*outgoing_metadata(tuple(details.metadata or ()))),
            credentials=details.credentials,
            wait_for_ready=details.wait_for_ready,
        )

    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(self._details(client_call_details), request)

    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(self._details(client_call_details), request)

    async def intercept_stream_unary(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)

    async def intercept_stream_stream(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)


def open_channel(
    target: str,
    limits: LimitSettings,
    *,
    tracer_provider: TracerProvider | None = None,
) -> grpc.aio.Channel:
    """An insecure channel (loopback / trusted network) to another service."""
    interceptors: list[grpc.aio.ClientInterceptor] = [_PropagationInterceptor()]
    if tracer_provider is not None:
        interceptors = [*aio_client_interceptors(tracer_provider=tracer_provider), *interceptors]
    return grpc.aio.insecure_channel(target, options=channel_options(limits), interceptors=interceptors)


class ChannelPool:
    """One channel per endpoint, reused for every call to it (the router
    talks to many workers)."""

    def __init__(self, limits: LimitSettings, *, tracer_provider: TracerProvider | None = None) -> None:
        self._limits = limits
        self._tracer_provider = tracer_provider
        self._channels: dict[str, grpc.aio.Channel] = {}

    def get(self, endpoint: str) -> grpc.aio.Channel:
        channel = self._channels.get(endpoint)
        if channel is None:
            channel = open_channel(endpoint, self._limits, tracer_provider=self._tracer_provider)
            self._channels[endpoint] = channel
        return channel

    async def discard(self, endpoint: str) -> None:
        channel = self._channels.pop(endpoint, None)
        if channel is not None:
            await channel.close()

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close()
