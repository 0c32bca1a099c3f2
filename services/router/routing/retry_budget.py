"""Retries stay a bounded share of the traffic: a token bucket (Finagle's
RetryBudget) and exponential backoff with full jitter.

Each request deposits `ratio` tokens and `min_per_s` tokens arrive each
second, up to `capacity`; each retry withdraws one. When a dependency fails
for every request, retries settle at ratio x requests + min_per_s per
second instead of multiplying the load."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from headrace.runtime.routing_settings import RetrySettings


class RetryBudget:
    def __init__(self, settings: RetrySettings, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._settings = settings
        self._clock = clock
        self._tokens = settings.budget_capacity
        self._updated = clock()

    @property
    def tokens(self) -> float:
        self._refill()
        return self._tokens

    def configure(self, settings: RetrySettings) -> None:
        self._refill()
        self._settings = settings
        self._tokens = min(self._tokens, settings.budget_capacity)

    def deposit(self) -> None:
        """One request was sent."""
        self._refill()
        self._tokens = min(self._settings.budget_capacity, self._tokens + self._settings.budget_ratio)

    def try_withdraw(self) -> bool:
        """Take one retry from the budget; False: the budget is spent."""
        self._refill()
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def _refill(self) -> None:
        now = self._clock()
        elapsed = max(0.0, now - self._updated)
        self._updated = now
        self._tokens = min(self._settings.budget_capacity, self._tokens + elapsed * self._settings.budget_min_per_s)


class Backoff:
    """Delay before retry n (1-based): uniform in [0, min(max, base x 2^(n-1))]
    ("full jitter"), so retries of many requests spread out."""

    def __init__(self, settings: RetrySettings, *, rng: random.Random | None = None) -> None:
        self._settings = settings
        self._rng = rng or random.Random()

    def configure(self, settings: RetrySettings) -> None:
        self._settings = settings

    def delay_s(self, retry: int) -> float:
        ceiling_ms = min(self._settings.backoff_max_ms, self._settings.backoff_base_ms * 2.0 ** max(0, retry - 1))
        return self._rng.uniform(0.0, ceiling_ms) / 1000.0
