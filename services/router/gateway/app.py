"""The gateway's ASGI app: OpenAI's endpoints over the router's flows.

    build_gateway_app(services, authenticator=..., extra_routers=[files_and_batches])

Routes are thin (parse, convert, call a flow, convert back); the middleware
does request ids, deadlines, auth and metrics for every path; errors.py
turns every error into OpenAI's error JSON. Extra APIRouters (e.g.
/v1/files and /v1/batches) are mounted behind the same middleware, so they
get the tenant (`headrace.runtime.request_context.current_tenant()`), the
request id and the error format without doing anything.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from fastapi import APIRouter, FastAPI
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.trace import TracerProvider

from headrace.runtime.auth import Authenticator
from headrace.runtime.telemetry import records_spans
from services.router.gateway.completions import completions_routers
from services.router.gateway.dependencies import GatewayServices
from services.router.gateway.embeddings import embeddings_router
from services.router.gateway.errors import install_error_handlers
from services.router.gateway.health import health_router
from services.router.gateway.middleware import HEALTH_PATH, METRICS_PATH, GatewayMiddleware
from services.router.gateway.models import models_router
from services.router.gateway.realtime import realtime_router


def build_gateway_app(
    services: GatewayServices,
    *,
    authenticator: Authenticator,
    extra_routers: Sequence[APIRouter] = (),
    serving: Callable[[], bool] = lambda: True,
    tracer_provider: TracerProvider | None = None,
) -> FastAPI:
    """`tracer_provider`: trace every request (a server span that continues
    the caller's `traceparent`, around the middleware and the route), where
    it records spans (records_spans)."""
    # No generated docs: bodies are parsed by hand (bounded, with OpenAI's
    # errors), so the schema FastAPI would publish would be wrong.
    app = FastAPI(title="Headrace", openapi_url=None, docs_url=None, redoc_url=None)
    for router in (
        *completions_routers(services),
        embeddings_router(services),
        models_router(services),
        realtime_router(services),
        health_router(serving),
        *extra_routers,
    ):
        app.include_router(router)
    install_error_handlers(app)
    app.add_middleware(GatewayMiddleware, authenticator=authenticator, settings=services.settings.gateway)
    if tracer_provider is not None and records_spans(tracer_provider):
        FastAPIInstrumentor.instrument_app(
            app,
            tracer_provider=tracer_provider,
            # No span per ASGI message: a stream would get one per token.
            exclude_spans=["receive", "send"],
            # Probes and scrapes are not requests anyone traces.
            excluded_urls=f"{HEALTH_PATH}$,{METRICS_PATH}$",
        )
    return app
