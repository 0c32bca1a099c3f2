"""Celery's own tools see the batch consumers: `celery -A
headrace.batch.celery_app` finds the broker and key prefix from the same
settings, and a running consumer answers `inspect ping` and lists its
queue (remote control on by default)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from headrace.batch.queue import queue_name
from headrace.local.redis_server import RedisServer
from tests.integration.batch.conftest import batch_settings
from tests.support.batch import ConsumerProcess, write_config
from tests.support.mesh import InProcessMesh, start_mesh

pytestmark = pytest.mark.slow


@pytest.fixture
async def mesh(redis_server: RedisServer) -> AsyncIterator[InProcessMesh]:
    running = await start_mesh(batch_settings(redis_server.url))
    yield running
    await running.close()


def celery(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HEADRACE_CONFIG": str(config)}
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", "headrace.batch.celery_app", *args, "--timeout", "5"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_celery_inspect_sees_a_running_consumer(mesh: InProcessMesh, tmp_path: Path) -> None:
    config = write_config(mesh.settings, tmp_path / "headrace.yaml")
    consumer = ConsumerProcess(
        config, pool="smollm2", index=0, worker_address=mesh.workers[0].address, log_path=tmp_path / "consumer.log"
    )
    try:
        await consumer.wait_ready(mesh.settings)
        ping = await asyncio.to_thread(celery, config, "inspect", "ping")
        assert ping.returncode == 0, ping.stdout + ping.stderr
        assert f"{consumer.name}@" in ping.stdout and "pong" in ping.stdout
        queues = await asyncio.to_thread(celery, config, "inspect", "active_queues")
        assert queues.returncode == 0, queues.stdout + queues.stderr
        assert queue_name("smollm2") in queues.stdout
    finally:
        consumer.stop()
