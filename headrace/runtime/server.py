"""The one gRPC server bootstrap every service uses: grpc.aio with bounded
message sizes, the standard grpc.health.v1 service (status per service
name), server reflection, the shared interceptors, and a graceful stop on
SIGTERM (NOT_SERVING first, then in-flight calls get a grace period)."""

from __future__ import annotations

import asyncio
import importlib
import logging
import pkgutil
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import grpc
import grpc.aio
from google.protobuf import descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters
from opentelemetry.trace import TracerProvider

import headrace.v1
from headrace.runtime.auth import Authenticator
from headrace.runtime.channels import server_options
from headrace.runtime.config import LimitSettings
from headrace.runtime.gc_policy import freeze_startup_heap
from headrace.runtime.interceptors import ServerInterceptor
from headrace.runtime.service_identity import ServiceIdentity
from headrace.runtime.telemetry import records_spans

log = logging.getLogger(__name__)

# Health checks and reflection are tooling, not requests: no spans for them
# (and no OpenTelemetry context held open across a tool's reflection stream).
_UNTRACED = filters.negate(filters.any_of(filters.health_check(), filters.service_prefix("grpc.reflection.")))


def load_descriptors() -> None:
    """Import every generated module of headrace.v1, so every proto file is
    in the default descriptor pool and reflection can describe every
    service (a *_pb2_grpc module imports only the modules of its message
    types: router_pb2, which declares the Router service, is never imported
    by the code that serves it)."""
    for module in pkgutil.iter_modules(headrace.v1.__path__):
        if module.name.endswith("_pb2"):
            importlib.import_module(f"headrace.v1.{module.name}")


@dataclass(frozen=True)
class ServiceRegistration:
    """A servicer and the generated function that adds it to a server."""

    # Full service name, e.g. "headrace.v1.Worker" (for health and reflection).
    name: str
    add_to_server: Callable[[grpc.aio.Server], None]


class GrpcServiceHost:
    """A started-and-stopped gRPC server hosting one or more services."""

    def __init__(
        self,
        services: Sequence[ServiceRegistration],
        *,
        host: str,
        port: int,
        limits: LimitSettings,
        tracer_provider: TracerProvider | None = None,
        authenticator: Authenticator | None = None,
        identity: ServiceIdentity | None,
    ) -> None:
        """`identity`: this internal service's credential; with one, it serves
        mutual TLS only and checks each peer's role. None: plaintext (the
        router's public port, or open dev mode)."""
        self._services = list(services)
        self._identity = identity
        self.bound_host = host
        self._address = f"{host}:{port}"
        self._health = health.aio.HealthServicer()
        interceptors: list[grpc.aio.ServerInterceptor] = []
        if tracer_provider is not None and records_spans(tracer_provider):
            # Outermost, so the span covers everything else.
            interceptors.append(aio_server_interceptor(tracer_provider=tracer_provider, filter_=_UNTRACED))
        interceptors.append(ServerInterceptor(authenticator=authenticator, service_identity=identity is not None))
        self._server = grpc.aio.server(interceptors=interceptors, options=server_options(limits))
        self.port = 0

    async def start(self) -> int:
        load_descriptors()
        pool = descriptor_pool.Default()  # type: ignore[no-untyped-call]
        for service in self._services:
            # Reflection can describe only what the pool holds: for our own
            # contract, fail here, not in a user's grpcurl. (A test's ad hoc
            # service has no descriptor to offer, and needs none.)
            if service.name.startswith("headrace."):
                pool.FindServiceByName(service.name)
            service.add_to_server(self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        names = [service.name for service in self._services]
        reflection.enable_server_reflection(
            [*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
            self._server,
        )
        try:
            if self._identity is None:
                self.port = self._server.add_insecure_port(self._address)
            else:
                self.port = self._server.add_secure_port(self._address, self._identity.server_credentials())
        except RuntimeError as exc:
            raise OSError(f"could not bind {self._address}: is the port in use by another program?") from exc
        await self._server.start()
        await self.set_serving(True)
        return self.port

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ["", *(service.name for service in self._services)]:
            await self._health.set(name, status)

    async def stop(self, grace_s: float) -> None:
        await self.set_serving(False)
        await self._server.stop(grace_s)

    async def wait_for_termination(self) -> None:
        await self._server.wait_for_termination()


async def serve(
    host: GrpcServiceHost,
    *,
    grace_s: float = 5.0,
    after_start: Callable[[], Awaitable[None]] | None = None,
    before_stop: Callable[[], Awaitable[None]] | None = None,
    after_stop: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Run a service until SIGTERM or SIGINT, then stop it gracefully:
    health NOT_SERVING, `before_stop` (e.g. drain), stop with grace,
    `after_stop` (e.g. shut the engine down)."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    port = await host.start()
    log.info("serving on port %d", port)
    if after_start is not None:
        await after_start()
    log.info("startup heap frozen: %d objects the collector skips from now on", freeze_startup_heap())
    await stopping.wait()
    log.info("stopping: NOT_SERVING, grace %.1fs", grace_s)
    await host.set_serving(False)
    if before_stop is not None:
        try:
            await before_stop()
        except Exception:
            log.exception("before_stop failed; stopping anyway")
    await host.stop(grace_s)
    if after_stop is not None:
        await after_stop()
    log.info("stopped")
