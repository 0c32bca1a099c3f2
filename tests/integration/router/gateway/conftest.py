"""The mesh in-process with the router's HTTP gateway on a free port; the
synthetic engine (these tests are about the gateway, not a model)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from headrace.local.redis_server import RedisServer
from headrace.runtime.config import Settings
from tests.support.mesh import InProcessMesh, start_mesh


def gateway_settings(redis_url: str, **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "redis_url": redis_url,
        "pools": {
            "smollm2": {"engine": {"kind": "synthetic", "ttft_ms": 5, "tokens_per_s": 2000}},
            "embed": {"engine": {"kind": "synthetic"}},
        },
        "models": {
            "smollm2": {"default_version": "1", "versions": {"1": {"pool": "smollm2"}}},
            "minilm": {"task": "embed", "default_version": "1", "versions": {"1": {"pool": "embed"}}},
        },
        "aliases": {"chat": "smollm2"},
        "default_embedding_model": "minilm",
        "limits": {"max_prompt_chars": 10_000, "max_tokens": 512},
        "gateway": {"max_body_bytes": 64 * 1024},
        "worker": {"metrics_port_offset": None},
        "cache": {"metrics_port": None},
        "scheduler": {"metrics_port": None},
    }
    # Sections merge one level deep: `pools={"smollm2": ...}` replaces that
    # pool and keeps the others.
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return Settings(**base)


@pytest.fixture(scope="module")
async def gateway_mesh(redis_server: RedisServer) -> AsyncIterator[InProcessMesh]:
    """One mesh for a module's tests that leave it as they found it."""
    running = await start_mesh(gateway_settings(redis_server.url), http=True)
    yield running
    await running.close()


@contextlib.asynccontextmanager
async def running_gateway(settings: Settings) -> AsyncIterator[InProcessMesh]:
    """A mesh of its own, for a test that needs other settings or breaks it."""
    running = await start_mesh(settings, http=True)
    try:
        yield running
    finally:
        await running.close()


async def eventually(predicate: Callable[[], bool], *, timeout_s: float = 5.0) -> bool:
    """Poll until `predicate()` holds (True) or the time is up (False)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True
