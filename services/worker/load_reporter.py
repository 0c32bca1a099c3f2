"""Keeps a ReportLoad stream open to each scheduler replica for as long as
the worker serves: who it is, and its engine's load, every interval the
scheduler asks for. A broken stream is reopened with backoff."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import grpc.aio

from headrace.runtime.channels import open_channel
from headrace.runtime.config import LimitSettings
from headrace.runtime.service_certs import Role
from headrace.runtime.service_identity import ServiceIdentity
from headrace.v1 import scheduler_pb2, scheduler_pb2_grpc
from services.worker.convert import stats_to_load
from services.worker.engines.base import Engine

log = logging.getLogger(__name__)


class LoadReporter:
    def __init__(
        self,
        *,
        scheduler_targets: list[str],
        worker: scheduler_pb2.WorkerInfo,
        engine: Engine,
        limits: LimitSettings,
        identity: ServiceIdentity | None,
        interval_s: float = 0.5,
    ) -> None:
        """`identity`: the worker's credential (its certificate must name the
        host it announces), None in open dev mode."""
        self._targets = scheduler_targets
        self._worker = worker
        self._engine = engine
        self._limits = limits
        self._identity = identity
        self._interval_s = interval_s
        self._draining = False
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def set_endpoint(self, endpoint: str) -> None:
        self._worker.endpoint = endpoint

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._keep_stream(t), name=f"load-report:{t}") for t in self._targets]

    async def drain(self) -> None:
        """Tell the schedulers to place nothing new here, right away."""
        self._draining = True
        self._wake.set()
        # Give the report a moment to leave before the server stops.
        await asyncio.sleep(min(0.2, self._interval_s))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _keep_stream(self, target: str) -> None:
        backoff = 0.1
        async with open_channel(target, self._limits, self._identity, server=Role.SCHEDULER) as channel:
            stub = scheduler_pb2_grpc.SchedulerStub(channel)
            while True:
                try:
                    call = stub.ReportLoad(self._reports())
                    async for ack in call:
                        backoff = 0.1
                        if ack.report_interval_ms:
                            self._interval_s = ack.report_interval_ms / 1000.0
                    log.warning("scheduler %s closed the load stream; reopening", target)
                except grpc.aio.AioRpcError as exc:
                    log.warning("load stream to %s failed (%s); retrying in %.1fs", target, exc.code().name, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    async def _reports(self) -> AsyncIterator[scheduler_pb2.LoadReport]:
        while True:
            load = stats_to_load(
                self._engine.stats(), healthy=await self._engine.health(), now_ms=int(time.time() * 1000)
            )
            yield scheduler_pb2.LoadReport(worker=self._worker, load=load, draining=self._draining)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._interval_s)
