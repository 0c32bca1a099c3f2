"""Batch consumers for tests: a real Celery worker on a thread of the test
process (most tests), or as its own process (fault tests kill it), plus
small helpers to build input files and wait for a job."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import redis
import yaml
from celery.contrib.testing.worker import start_worker
from opentelemetry.sdk.trace import TracerProvider

from headrace.batch.queue import consumer_heartbeat_key, consumer_name, queue_name
from headrace.runtime.config import Settings
from headrace.v1 import batch_pb2, router_pb2_grpc
from services.worker.consumer.wiring import BatchConsumer

TERMINAL = {
    batch_pb2.BATCH_STATUS_COMPLETED,
    batch_pb2.BATCH_STATUS_FAILED,
    batch_pb2.BATCH_STATUS_CANCELLED,
    batch_pb2.BATCH_STATUS_EXPIRED,
}


def chat_rows(
    count: int, *, model: str = "smollm2", max_tokens: int = 4, prefix: str = "row", ignore_eos: bool = False
) -> bytes:
    """A chat-completions input file of `count` rows; `ignore_eos`: each
    decodes all of max_tokens (rows that hold the engine for a while)."""
    return jsonl(
        {
            "custom_id": f"{prefix}-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": model,
                "messages": [{"role": "user", "content": f"question {i}"}],
                "max_tokens": max_tokens,
                "temperature": 0,
                "ignore_eos": ignore_eos,
            },
        }
        for i in range(count)
    )


def jsonl(items: Iterable[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(item).encode() + b"\n" for item in items)


def parse_jsonl(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in data.splitlines() if line.strip()]


async def wait_for_job(
    stub: router_pb2_grpc.RouterStub,
    batch_id: str,
    *,
    statuses: set[batch_pb2.BatchStatus.ValueType] = TERMINAL,
    timeout_s: float = 30.0,
    metadata: tuple[tuple[str, str], ...] = (),
) -> batch_pb2.BatchJob:
    deadline = time.monotonic() + timeout_s
    while True:
        job: batch_pb2.BatchJob = await stub.GetBatch(batch_pb2.GetBatchRequest(batch_id=batch_id), metadata=metadata)
        if job.status in statuses:
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"batch {batch_id} still {batch_pb2.BatchStatus.Name(job.status)}: {job}")
        await asyncio.sleep(0.05)


async def wait_until(predicate: Any, *, timeout_s: float = 20.0, what: str = "condition") -> None:
    """Poll an async predicate until it holds."""
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running_consumer(
    settings: Settings,
    *,
    pool: str,
    worker_address: str,
    index: int = 0,
    worker_id: str | None = None,
    tracer_provider: TracerProvider | None = None,
) -> AsyncIterator[BatchConsumer]:
    """A consumer with a real Celery worker on a thread of this process.
    Built off the event loop: it calls the worker, which this loop serves."""
    consumer = await asyncio.to_thread(
        BatchConsumer,
        settings,
        pool=pool,
        index=index,
        worker_address=worker_address,
        worker_id=worker_id,
        tracer_provider=tracer_provider,
    )
    stack = contextlib.ExitStack()
    try:
        await asyncio.to_thread(
            stack.enter_context,
            start_worker(
                consumer.app,
                pool="threads",
                concurrency=settings.batch.consumer_chunks,
                perform_ping_check=False,
                queues=[queue_name(pool)],
                hostname=f"{consumer.name}-test@localhost",
                loglevel="WARNING",
                shutdown_timeout=30,
            ),
        )
        yield consumer
    finally:
        await asyncio.to_thread(stack.close)
        await asyncio.to_thread(consumer.close)


def write_config(settings: Settings, path: Path) -> Path:
    """The settings as a YAML file for HEADRACE_CONFIG (child processes)."""
    path.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    return path


class ConsumerProcess:
    """`python -m services.worker.consumer` as a child process."""

    def __init__(
        self, config: Path, *, pool: str, index: int, worker_address: str, log_path: Path, worker_id: str = ""
    ) -> None:
        self.pool = pool
        self.index = index
        self.name = consumer_name(pool, index)
        self._log_path = log_path
        env = {**os.environ, "HEADRACE_CONFIG": str(config), "HEADRACE_TELEMETRY__LOG_LEVEL": "INFO"}
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "services.worker.consumer",
                    *("--pool", pool, "--index", str(index), "--worker", worker_address),
                    *(("--worker-id", worker_id) if worker_id else ()),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self._log_path.read_text(errors="replace")

    async def wait_ready(self, settings: Settings, timeout_s: float = 30.0) -> None:
        key = consumer_heartbeat_key(settings, self.name)
        deadline = time.monotonic() + timeout_s
        with redis.Redis.from_url(settings.redis_url) as client:
            while not client.exists(key):
                if self.process.poll() is not None:
                    raise RuntimeError(f"consumer {self.name} exited at start:\n{self.log()[-3000:]}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"consumer {self.name} not ready in {timeout_s}s:\n{self.log()[-3000:]}")
                await asyncio.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL: no warm shutdown, no ack of what it was running."""
        self.process.kill()
        self.process.wait(timeout=10)

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


async def results(stub: router_pb2_grpc.RouterStub, batch_id: str, *, follow: bool = False) -> list[Any]:
    call = stub.StreamBatchResults(batch_pb2.StreamBatchResultsRequest(batch_id=batch_id, follow=follow))
    return [result async for result in call]
