"""The batch and file endpoints, ready to mount on the gateway's app:

app = build_gateway_app(..., extra_routers=batch_routers(forwarder, settings))

They sit behind the gateway's middleware and error handlers like every
other route: no auth or error handling of their own.
"""

from __future__ import annotations

from fastapi import APIRouter

from headrace.runtime.config import Settings
from services.router.batch_forwarding import BatchForwarder
from services.router.gateway.batches_api import build_batches_router
from services.router.gateway.files_api import build_files_router


def batch_routers(forwarder: BatchForwarder, settings: Settings) -> list[APIRouter]:
    """/v1/files (uploads up to batch.max_file_bytes) and /v1/batches
    (bodies up to gateway.max_body_bytes)."""
    return [
        build_files_router(forwarder, max_file_bytes=settings.batch.max_file_bytes),
        build_batches_router(forwarder, max_body_bytes=settings.gateway.max_body_bytes),
    ]
