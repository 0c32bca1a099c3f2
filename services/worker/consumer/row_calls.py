"""Batch rows sent to the worker many per call (Worker.GenerateBatch).

Per-row calls cost the worker most of its CPU on a batch job (grpc.aio's
own work per call: docs/batch.md). Here every row still asks for its own
lease and waits for its own result, but the rows ready within `window_s`
of the first (leases come in bursts, as rows end in waves, each row a
Redis round trip apart) leave in one call, and each row's whole answer
comes back on that call's stream as soon as it ends. The window is small
beside a row's run, and the engine's queue-ahead rows keep it busy
meanwhile; a full call (max_rows) leaves at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

import grpc
import grpc.aio

from headrace.runtime.channels import outgoing_metadata
from headrace.v1 import worker_pb2, worker_pb2_grpc

log = logging.getLogger(__name__)


_Pending = tuple[worker_pb2.WorkerGenerateRequest, "asyncio.Future[worker_pb2.GenerateBatchResult]"]


class RowCalls:
    def __init__(
        self,
        stub: worker_pb2_grpc.WorkerStub,
        *,
        max_rows: int,
        timeout_s: float,
        window_s: float | Callable[[], float] = 0.005,
    ) -> None:
        self._stub = stub
        self._max_rows = max_rows
        # A number, or asked each time (call_window.py).
        self._window_s: Callable[[], float] = window_s if callable(window_s) else lambda: window_s
        self._timeout_s = timeout_s
        self._pending: deque[_Pending] = deque()
        self._flush_scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._calls: set[asyncio.Task[None]] = set()
        # Calls made and rows sent (for tests and metrics).
        self.calls = 0
        self.rows = 0

    async def run(self, row: worker_pb2.WorkerGenerateRequest) -> worker_pb2.GenerateBatchResult:
        """The row's result; raises the call's AioRpcError if the call as a
        whole failed. A caller that leaves has its row aborted."""
        future: asyncio.Future[worker_pb2.GenerateBatchResult] = asyncio.get_running_loop().create_future()
        self._pending.append((row, future))
        if len(self._pending) >= self._max_rows:
            self._flush()
        elif not self._flush_scheduled:
            # The rows ready within the window share one call.
            self._flush_scheduled = True
            self._timer = asyncio.get_running_loop().call_later(self._window_s(), self._flush)
        try:
            return await future
        except asyncio.CancelledError:
            if not future.done() or future.cancelled():
                self._spawn(self._abort(row.request_id))
            raise

    async def close(self) -> None:
        for task in list(self._calls):
            task.cancel()
        await asyncio.gather(*self._calls, return_exceptions=True)

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._flush_scheduled = False
        while self._pending:
            rows: list[_Pending] = []
            while self._pending and len(rows) < self._max_rows:
                row, future = self._pending.popleft()
                if not future.done():
                    rows.append((row, future))
            if rows:
                self._spawn(self._call(rows))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)

    async def _call(self, rows: list[_Pending]) -> None:
        waiting = {row.request_id: future for row, future in rows}
        self.calls += 1
        self.rows += len(rows)
        call = self._stub.GenerateBatch(
            worker_pb2.GenerateBatchRequest(rows=[row for row, _ in rows]),
            metadata=outgoing_metadata(),
            timeout=self._timeout_s,
        )
        try:
            async for result in call:
                future = waiting.pop(result.request_id, None)
                if future is not None and not future.done():
                    future.set_result(result)
        except grpc.aio.AioRpcError as exc:
            for future in waiting.values():
                if not future.done():
                    future.set_exception(exc)
            waiting.clear()
        finally:
            call.cancel()
            for future in waiting.values():
                if not future.done():
                    future.set_exception(
                        grpc.aio.AioRpcError(
                            grpc.StatusCode.UNAVAILABLE,
                            grpc.aio.Metadata(),
                            grpc.aio.Metadata(),
                            details="the worker's GenerateBatch stream ended without this row",
                        )
                    )

    async def _abort(self, request_id: str) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError):
            await self._stub.Abort(worker_pb2.AbortRequest(request_id=request_id), timeout=5.0)
