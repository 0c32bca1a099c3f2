"""Replay a trace against a running mesh at its timestamps, over the
Router's gRPC API: online requests stream (TTFT measured at the first
token), batch-lane requests go in OpenAI Batch jobs, one per window. Every
request's fate is kept (how it was served, what it cost, its error), and
how late each one was sent: a replayer that falls behind says so instead of
quietly measuring a gentler load.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import grpc.aio

from headrace.client import AsyncHeadraceClient, build_generate_request
from headrace.runtime.errors import HeadraceError
from headrace.v1 import batch_pb2, generation_pb2
from headrace.workload.trace import TraceRecord

_CACHE_WORDS = {
    generation_pb2.CACHE_OUTCOME_HIT_EXACT: "hit-exact",
    generation_pb2.CACHE_OUTCOME_HIT_SEMANTIC: "hit-semantic",
    generation_pb2.CACHE_OUTCOME_MISS: "miss",
    generation_pb2.CACHE_OUTCOME_BYPASS: "bypass",
}


@dataclass
class Outcome:
    """What became of one online request."""

    id: str
    scheduled_s: float
    # Seconds the send came after its timestamp.
    late_s: float = 0.0
    ttft_s: float | None = None
    total_s: float | None = None
    cache: str = ""
    model: str = ""
    text: str = ""
    completion_tokens: int = 0
    cost_usd: float = 0.0
    # gRPC status name, empty when it succeeded.
    error: str = ""


@dataclass
class BatchOutcome:
    batch_id: str
    rows: int
    submitted_at_s: float
    completed: int = 0
    failed: int = 0
    finished_after_s: float | None = None
    status: str = ""
    error: str = ""


@dataclass
class ReplayResult:
    online: list[Outcome] = field(default_factory=list)
    batches: list[BatchOutcome] = field(default_factory=list)
    wall_s: float = 0.0


class Replayer:
    def __init__(
        self,
        client: AsyncHeadraceClient,
        *,
        tenant_clients: Mapping[str, AsyncHeadraceClient] | None = None,
        max_in_flight: int = 256,
        batch_window_s: float = 30.0,
        batch_timeout_s: float = 600.0,
        speed: float = 1.0,
        on_sent: Callable[[], None] | None = None,
        no_cache: bool = False,
    ) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        # Tenants come from API keys: a trace of several tenants replays
        # each through a client holding that tenant's key.
        self._client = client
        self._tenant_clients = dict(tenant_clients or {})
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self._batch_window_s = batch_window_s
        self._batch_timeout_s = batch_timeout_s
        self._speed = speed
        self._on_sent = on_sent or (lambda: None)
        # Online requests skip the response cache (neither read nor stored):
        # a deploy without one, measured on the same mesh.
        self._no_cache = no_cache

    async def replay(self, records: Sequence[TraceRecord]) -> ReplayResult:
        result = ReplayResult()
        started = time.monotonic()
        tasks: list[asyncio.Task[None]] = []
        # Batch-lane rows wait for the end of their window, then go as one
        # job per tenant.
        windows: dict[str, list[TraceRecord]] = {}
        window_end = self._batch_window_s

        def flush() -> None:
            for rows in windows.values():
                tasks.append(asyncio.create_task(self._batch(rows, started, result)))
            windows.clear()

        for record in records:
            scheduled = record.at_s / self._speed
            if record.lane == "batch":
                if record.at_s >= window_end:
                    flush()
                    while record.at_s >= window_end:
                        window_end += self._batch_window_s
                windows.setdefault(record.tenant, []).append(record)
                self._on_sent()
                continue
            delay = started + scheduled - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await self._in_flight.acquire()
            late_s = max(0.0, time.monotonic() - started - scheduled)
            outcome = Outcome(id=record.id, scheduled_s=scheduled, late_s=late_s)
            result.online.append(outcome)
            tasks.append(asyncio.create_task(self._online(record, outcome)))
            self._on_sent()
        flush()
        await asyncio.gather(*tasks)
        result.wall_s = time.monotonic() - started
        return result

    async def _online(self, record: TraceRecord, outcome: Outcome) -> None:
        request = build_generate_request(
            messages=[m.model_dump() for m in record.messages],
            model=record.model,
            max_tokens=record.max_tokens,
            temperature=record.temperature,
            no_cache=self._no_cache,
            no_store=self._no_cache,
        )
        client = self._tenant_clients.get(record.tenant, self._client)
        sent = time.monotonic()
        text: list[str] = []
        try:
            async for chunk in client.generate_stream_request(request):
                if outcome.ttft_s is None:
                    outcome.ttft_s = time.monotonic() - sent
                    outcome.cache = _CACHE_WORDS.get(chunk.route.cache, "")
                    outcome.model = chunk.model
                text.append(chunk.text)
                if chunk.finish_reason:
                    outcome.completion_tokens = chunk.usage.completion_tokens
                    outcome.cost_usd = chunk.cost.usd
            outcome.total_s = time.monotonic() - sent
            outcome.text = "".join(text)
        except HeadraceError as exc:
            outcome.error = type(exc).__name__
        except grpc.aio.AioRpcError as exc:
            outcome.error = exc.code().name
        finally:
            self._in_flight.release()

    async def _batch(self, rows: list[TraceRecord], started: float, result: ReplayResult) -> None:
        lines = [
            json.dumps(
                {
                    "custom_id": record.id,
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": {
                        "model": record.model,
                        "messages": [m.model_dump() for m in record.messages],
                        "max_tokens": record.max_tokens,
                        "temperature": record.temperature,
                    },
                }
            )
            for record in rows
        ]
        outcome = BatchOutcome(batch_id="", rows=len(rows), submitted_at_s=time.monotonic() - started)
        result.batches.append(outcome)
        client = self._tenant_clients.get(rows[0].tenant, self._client)
        try:
            job = await client.submit_batch(("\n".join(lines) + "\n").encode())
            outcome.batch_id = job.id
            deadline = time.monotonic() + self._batch_timeout_s
            while job.status not in _TERMINAL and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                job = await client.get_batch(job.id)
            outcome.completed = job.request_counts.completed
            outcome.failed = job.request_counts.failed
            outcome.status = batch_pb2.BatchStatus.Name(job.status).removeprefix("BATCH_STATUS_").lower()
            if job.status in _TERMINAL:
                outcome.finished_after_s = time.monotonic() - started
            else:
                with contextlib.suppress(HeadraceError, grpc.aio.AioRpcError):
                    await client.cancel_batch(job.id)
        except HeadraceError as exc:
            outcome.error = f"{type(exc).__name__}: {exc}"
        except grpc.aio.AioRpcError as exc:
            outcome.error = f"{exc.code().name}: {exc.details()}"


_TERMINAL = {
    batch_pb2.BATCH_STATUS_COMPLETED,
    batch_pb2.BATCH_STATUS_FAILED,
    batch_pb2.BATCH_STATUS_CANCELLED,
    batch_pb2.BATCH_STATUS_EXPIRED,
}
