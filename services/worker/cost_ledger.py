"""Each request's share of its engine's time, by the tokens it made the
engine process (docs/observability.md, "Cost").

Under continuous batching one engine step serves every running sequence,
and a sequence in prefill (thousands of prompt tokens) costs the step far
more than one decoding a single token. So the engine's busy time is cut
into windows (closed when a sequence enters or ends, and otherwise when
a sequence reports its next step after `settle_interval_s`: between two
steps, never inside one step's burst of deltas), and each window's time is
split among the sequences by the weighted tokens each processed in it:

    weight = prefill_token_weight x prompt tokens computed (cached prefix excluded)
           + completion tokens decoded

A window in which no sequence reported tokens (all still waiting for their
first) is split evenly among the open ones. Every busy second goes to some
request, so the requests' engine seconds add up to the engine's busy time
(`headrace_worker_busy_seconds_total`), and their costs to busy time x price.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from services.worker import metrics


@dataclass
class _Sequence:
    seconds: float = 0.0
    # Weighted tokens processed since the window opened.
    weight: float = 0.0
    # Whether it reported a delta since the window opened.
    reported: bool = False


class TokenShareLedger:
    def __init__(
        self,
        *,
        prefill_token_weight: float,
        settle_interval_s: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._prefill_weight = prefill_token_weight
        self._settle_interval_s = settle_interval_s
        self._clock = clock
        self._open: dict[object, _Sequence] = {}
        # Start of the window not yet split; None while the engine is idle.
        self._window_start: float | None = None
        self.busy_seconds = 0.0

    def start(self, key: object) -> None:
        """A sequence entered the engine."""
        now = self._clock()
        if self._window_start is None:
            self._window_start = now
        else:
            # The newcomer shares only time from now on.
            self._settle(now)
        self._open[key] = _Sequence()

    def processed(self, key: object, *, prefill_tokens: int, decoded_tokens: int) -> None:
        """A delta of the sequence arrived: the prompt tokens it computed
        (cached prefix excluded) and the tokens it decoded since its last one."""
        sequence = self._open[key]
        if sequence.reported and self._window_start is not None:
            # Its second delta in this window: a new engine step has begun,
            # so every delta of the last one is in. Close the window here
            # (once it is long enough), never in the middle of a step's burst.
            now = self._clock()
            if now - self._window_start >= self._settle_interval_s:
                self._settle(now)
        sequence.weight += self._prefill_weight * max(0, prefill_tokens) + max(0, decoded_tokens)
        sequence.reported = True

    def seconds(self, key: object) -> float:
        """Engine seconds charged to the sequence so far (settled windows)."""
        return self._open[key].seconds

    def finish(self, key: object) -> float:
        """The sequence left the engine (done, failed or cancelled); returns
        the engine seconds it is charged."""
        self._settle(self._clock())
        sequence = self._open.pop(key)
        if not self._open:
            self._window_start = None
        return sequence.seconds

    def _settle(self, now: float) -> None:
        if self._window_start is None or not self._open:
            return
        elapsed = max(0.0, now - self._window_start)
        self._window_start = now
        self.busy_seconds += elapsed
        metrics.BUSY_SECONDS.inc(elapsed)
        total = sum(s.weight for s in self._open.values())
        for sequence in self._open.values():
            share = sequence.weight / total if total > 0 else 1.0 / len(self._open)
            sequence.seconds += elapsed * share
            sequence.weight = 0.0
            sequence.reported = False
