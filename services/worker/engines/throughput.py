"""Recent tokens per second, for load reports."""

from __future__ import annotations

import time
from collections import deque


class ThroughputMeter:
    """Counts events in a sliding window (default 5 s)."""

    def __init__(self, window_s: float = 5.0) -> None:
        self._window_s = window_s
        # (second bucket, count) pairs, oldest first.
        self._buckets: deque[list[int]] = deque()

    def add(self, count: int, now: float | None = None) -> None:
        second = int(now if now is not None else time.monotonic())
        if self._buckets and self._buckets[-1][0] == second:
            self._buckets[-1][1] += count
        else:
            self._buckets.append([second, count])
        self._trim(second)

    def rate(self, now: float | None = None) -> float:
        second = int(now if now is not None else time.monotonic())
        self._trim(second)
        return sum(count for _, count in self._buckets) / self._window_s

    def _trim(self, second: int) -> None:
        while self._buckets and self._buckets[0][0] <= second - self._window_s:
            self._buckets.popleft()
