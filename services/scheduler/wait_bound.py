"""How many requests a pool may keep waiting, and when a refused caller
should come back: from how fast the pool drains, not a fixed count.

A pool with `slots` slots whose leases are held `hold_s` on average hands
out slots at

    drain = slots / hold_s            (Little's law, at saturation)

so the request at position q of the queue (0: next) expects to wait
(q + 1) / drain. The queue admits while that stays within max_wait_s:

    limit = floor(max_wait_s x drain)     clamped to [1, ceiling]

and a refused caller is told to retry once the queue ahead of it has
drained, (queued + 1) / drain, clamped to [1 s, retry_after_max_s].

A fixed count cannot be right for every pool: 256 waiting is a few
seconds on a fast pool and a minute on a slow one (measured: at 10x
overload with a queue of 256, admitted requests waited p99 61 s).

The hold time is an exponentially weighted mean of the leases released
(not expired: a vanished router's lease says nothing of the engine).
Until the first release there is no measurement and the ceiling applies
(queue_limit, as before this bound existed); the first lease released
gives one. With no capacity at all (every worker restarting), the ceiling
applies too, so waiters ride out a worker's restart as before (the orphan
grace period fails them later).
"""

from __future__ import annotations

import math


class WaitBound:
    def __init__(
        self,
        *,
        max_wait_s: float,
        ceiling: int,
        retry_after_max_s: float = 30.0,
        smoothing: float = 0.1,
    ) -> None:
        if max_wait_s <= 0:
            raise ValueError("max_wait_s must be > 0")
        if not 0 < smoothing <= 1:
            raise ValueError("smoothing must be in (0, 1]")
        self.max_wait_s = max_wait_s
        self.ceiling = ceiling
        self.retry_after_max_s = retry_after_max_s
        self._smoothing = smoothing
        self._hold_s: float | None = None

    @property
    def hold_s(self) -> float | None:
        """The mean lease hold time so far (None: nothing released yet)."""
        return self._hold_s

    def observe_hold(self, seconds: float) -> None:
        """A lease was released after being held `seconds`."""
        seconds = max(seconds, 1e-4)
        if self._hold_s is None:
            self._hold_s = seconds
        else:
            self._hold_s += self._smoothing * (seconds - self._hold_s)

    def drain_per_s(self, slots: int) -> float | None:
        """Slots handed out per second when every slot is busy (None: unknown)."""
        if self._hold_s is None or slots <= 0:
            return None
        return slots / self._hold_s

    def limit(self, slots: int) -> int:
        """Requests the queue may hold now."""
        drain = self.drain_per_s(slots)
        if drain is None:
            return self.ceiling
        return max(min(1, self.ceiling), min(self.ceiling, math.floor(self.max_wait_s * drain)))

    def expected_wait_s(self, position: int, slots: int) -> float | None:
        """Expected wait of the request at `position` (0: next in line)."""
        drain = self.drain_per_s(slots)
        return None if drain is None else (position + 1) / drain

    def retry_after_s(self, queued: int, slots: int) -> float:
        """When a refused caller is likely to find a slot: once the queue
        ahead of it (`queued` waiting) has drained."""
        wait = self.expected_wait_s(queued, slots)
        if wait is None:
            # Nothing measured yet (or no capacity): a short, honest guess.
            return 1.0
        return min(self.retry_after_max_s, max(1.0, wait))
