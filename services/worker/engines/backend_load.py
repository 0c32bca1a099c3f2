"""What the engines in front of a remote backend (openai_upstream.py,
triton.py) share: the requests they send it, bounded (Slots), the tokens
per second it recently gave, the stats made of both, and the health probe.

    self._load = BackendLoad(settings.max_concurrency)
    async with self._load.slots: ...       # one request at the backend
    self._load.meter.add(tokens)
    def stats(self) -> EngineStats: return self._load.stats()
    async def health(self) -> bool: return await probe(lambda timeout_s: ...)
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from services.worker.engines.base import EngineStats
from services.worker.engines.slots import Slots
from services.worker.engines.throughput import ThroughputMeter

log = logging.getLogger(__name__)

# How long a health probe may take.
HEALTH_TIMEOUT_S = 2.0


class BackendLoad:
    def __init__(self, capacity: int) -> None:
        self.slots = Slots(capacity)
        self.meter = ThroughputMeter()

    @property
    def running(self) -> int:
        return self.slots.running

    def stats(self) -> EngineStats:
        return EngineStats(
            running=self.slots.running,
            waiting=self.slots.waiting,
            capacity=self.slots.capacity,
            tokens_per_second=self.meter.rate(),
        )


async def probe(check: Callable[[float], Awaitable[object]]) -> bool:
    """Healthy when `check(timeout_s)` answers truthy: a backend that fails
    the probe in any way (down, slow, an error) is reported unhealthy, not
    raised, so the worker's health service can say so."""
    try:
        return bool(await check(HEALTH_TIMEOUT_S))
    except Exception as exc:
        log.debug("health probe failed: %r", exc)
        return False
