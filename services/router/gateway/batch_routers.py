"""The batch and file endpoints, ready to mount on the gateway's app:

app = build_gateway_app(..., extra_routers=batch_routers(scheduler_stub, settings, tenant_of))
"""

from __future__ import annotations

from fastapi import APIRouter

from headrace.runtime.auth import ApiKeyAuthenticator
from headrace.runtime.config import Settings
from headrace.v1 import scheduler_pb2_grpc
from services.router.batch_forwarding import BatchForwarder
from services.router.gateway.batch_common import TenantOf, tenant_from_api_key
from services.router.gateway.batches_api import build_batches_router
from services.router.gateway.files_api import build_files_router


def batch_routers(
    scheduler: scheduler_pb2_grpc.SchedulerStub, settings: Settings, tenant_of: TenantOf | None = None
) -> list[APIRouter]:
    """/v1/files and /v1/batches. `tenant_of` defaults to the API key in the
    Authorization header, checked against the configured tenants."""
    forwarder = BatchForwarder(scheduler)
    tenant_of = tenant_of or tenant_from_api_key(ApiKeyAuthenticator(settings.tenants))
    return [
        build_files_router(forwarder, tenant_of, max_file_bytes=settings.batch.max_file_bytes),
        build_batches_router(forwarder, tenant_of),
    ]
