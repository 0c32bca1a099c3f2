"""Work taken off a request's critical path (lease release, cache store),
tracked so none is lost to garbage collection and all of it is awaited on
shutdown."""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Coroutine
from typing import Any

from headrace.runtime.request_context import deadline_var

log = logging.getLogger(__name__)


class BackgroundTasks:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str) -> None:
        # Keeps the request id and tenant for logs and metadata, but not the
        # request's deadline: cleanup must run even after a request timed out.
        context = contextvars.copy_context()
        context.run(deadline_var.set, float("inf"))
        task = asyncio.create_task(coro, name=name, context=context)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task %s failed: %r", task.get_name(), task.exception())

    async def drain(self, timeout_s: float = 5.0) -> None:
        """Wait for what is running (at most timeout_s), then cancel the rest."""
        if not self._tasks:
            return
        _done, pending = await asyncio.wait(set(self._tasks), timeout=timeout_s)
        for task in pending:
            task.cancel()
