"""GET /healthz (no key needed: probes carry none) and GET /metrics: the
router's Prometheus registry, gRPC and HTTP metrics together."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.responses import JSONResponse, Response

from services.router.gateway.middleware import HEALTH_PATH, METRICS_PATH


def health_router(serving: Callable[[], bool]) -> APIRouter:
    router = APIRouter()

    @router.get(HEALTH_PATH)
    async def healthz() -> Response:
        if serving():
            return JSONResponse({"status": "serving"})
        # Stopping: a load balancer should send new requests elsewhere.
        return JSONResponse({"status": "not_serving"}, status_code=503)

    @router.get(METRICS_PATH)
    async def metrics() -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return router
