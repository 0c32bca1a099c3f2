"""Settings for batch tests: small chunks, quick retries, and a key prefix
of their own per test (jobs and Celery queues alike), so tests sharing the
session's Redis never see each other's work."""

from __future__ import annotations

import uuid
from typing import Any

from headrace.runtime.config import Settings
from tests.integration.test_mesh_grpc import mesh_settings

FAST_BATCH: dict[str, Any] = {
    "chunk_rows": 4,
    "consumer_chunks": 2,
    "max_inflight_rows": 16,
    "row_max_attempts": 2,
    "retry_backoff_s": 0.05,
    "retry_backoff_max_s": 0.2,
    "chunk_timeout_s": 20,
    "visibility_timeout_s": 30,
    "restore_interval_s": 1,
}


def batch_settings(redis_url: str, *, batch: dict[str, Any] | None = None, **overrides: Any) -> Settings:
    return mesh_settings(
        redis_url,
        batch={**FAST_BATCH, "key_prefix": f"test-{uuid.uuid4().hex[:8]}:", **(batch or {})},
        **overrides,
    )
