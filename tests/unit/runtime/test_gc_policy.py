"""Services freeze their startup heap once they serve (gc_policy.py)."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
from collections.abc import Iterator

import pytest

from headrace.runtime import gc_policy, server


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_what_is_alive_is_frozen_and_what_comes_later_is_not(unfrozen: None) -> None:
    alive: list[int] = []
    # A count, not an equality with get_freeze_count() afterwards: frozen
    # objects that other threads of the test process (gRPC's poller, an
    # exporter) drop meanwhile leave the permanent generation (CI saw 27).
    assert gc_policy.freeze_startup_heap() > 0 and gc.get_freeze_count() > 0
    later: list[int] = []
    # The collector's generations (what a collection walks) hold only what
    # came after the freeze.
    walked = {id(item) for item in gc.get_objects()}
    assert id(alive) not in walked
    assert id(later) in walked


class _Host:
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def start(self) -> int:
        self.calls.append("start")
        return 1234

    async def set_serving(self, serving: bool) -> None:
        self.calls.append(f"serving={serving}")

    async def stop(self, grace_s: float) -> None:
        self.calls.append("stop")


async def test_serve_freezes_once_started_then_stops_on_sigterm(unfrozen: None) -> None:
    host = _Host()
    frozen_at_start: list[int] = []

    async def after_start() -> None:
        frozen_at_start.append(gc.get_freeze_count())
        # Stop as `headrace down` does, once serve() has frozen the heap.
        asyncio.get_running_loop().call_soon(os.kill, os.getpid(), signal.SIGTERM)

    await asyncio.wait_for(server.serve(host, after_start=after_start), 5.0)  # type: ignore[arg-type]
    # Nothing was frozen before after_start (the service's own start); then it was.
    assert frozen_at_start == [0]
    assert gc.get_freeze_count() > 0
    assert host.calls == ["start", "serving=False", "stop"]
