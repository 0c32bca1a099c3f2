"""Circuit breakers, one per key (a worker id, a model version), local to a
router replica like Envoy's outlier detection: each replica sees its own
failures and needs no coordination to stop sending to what keeps failing.

    closed ──failure_threshold failures in a row──▶ open
    open ──open_s elapsed──▶ half-open (up to half_open_probes requests pass)
    half-open ──a probe succeeds──▶ closed
    half-open ──a probe fails──▶ open (for open_s again)

A caller asks `blocked(key)` before choosing, then brackets the call with
`begin(key)` and `end(key, ok)`; `end(key, None)` gives a probe slot back
without a verdict (the request was cancelled).
"""

from __future__ import annotations

import contextlib
import enum
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from headrace.runtime.routing_settings import CircuitBreakerSettings
from services.router.routing import metrics

log = logging.getLogger(__name__)


class BreakerState(enum.Enum):
    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


@dataclass
class _Breaker:
    state: BreakerState = BreakerState.CLOSED
    failures: int = 0
    opened_at: float = 0.0
    probes: int = 0
    last_probe_at: float = 0.0


class CircuitBreakers:
    """The breakers of one kind ("worker" or "model"), by key."""

    # Closed breakers beyond this many are forgotten, oldest first (workers
    # come and go; the map must not grow without bound).
    MAX_KEYS = 4096

    def __init__(
        self, kind: str, settings: CircuitBreakerSettings, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.kind = kind
        self._settings = settings
        self._clock = clock
        self._breakers: OrderedDict[str, _Breaker] = OrderedDict()

    def configure(self, settings: CircuitBreakerSettings) -> None:
        self._settings = settings

    @property
    def deadline_counts_after_s(self) -> float:
        return self._settings.deadline_counts_after_s

    def state(self, key: str) -> BreakerState:
        breaker = self._breakers.get(key)
        if breaker is None:
            return BreakerState.CLOSED
        self._maybe_half_open(key, breaker)
        return breaker.state

    def blocked(self, key: str) -> bool:
        """True when nothing should be sent to key now."""
        breaker = self._breakers.get(key)
        if breaker is None:
            return False
        self._maybe_half_open(key, breaker)
        if breaker.state is BreakerState.OPEN:
            return True
        if breaker.state is BreakerState.HALF_OPEN:
            # A probe that never reported back (a lost task) must not keep
            # the circuit shut: its slot lapses after open_s.
            if breaker.probes and self._clock() - breaker.last_probe_at > self._settings.open_s:
                breaker.probes = 0
            return breaker.probes >= self._settings.half_open_probes
        return False

    def retry_after_s(self, key: str) -> float:
        breaker = self._breakers.get(key)
        if breaker is None or breaker.state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, breaker.opened_at + self._settings.open_s - self._clock())

    def begin(self, key: str) -> None:
        breaker = self._breakers.get(key)
        if breaker is None:
            return
        self._maybe_half_open(key, breaker)
        if breaker.state is BreakerState.HALF_OPEN:
            breaker.probes += 1
            breaker.last_probe_at = self._clock()

    def end(self, key: str, ok: bool | None) -> None:
        """ok: the call succeeded (True), failed in a way that counts (False),
        or ended without a verdict (None: cancelled, a client error)."""
        breaker = self._breakers.get(key)
        if breaker is not None and breaker.state is BreakerState.HALF_OPEN and breaker.probes:
            breaker.probes -= 1
        if ok is None:
            return
        if ok:
            if breaker is None:
                return
            if breaker.state is not BreakerState.CLOSED:
                self._transition(key, breaker, BreakerState.CLOSED)
            breaker.failures = 0
            return
        if breaker is None:
            breaker = self._breakers[key] = _Breaker()
            self._evict()
        self._breakers.move_to_end(key)
        breaker.failures += 1
        if breaker.state is BreakerState.HALF_OPEN or (
            breaker.state is BreakerState.CLOSED and breaker.failures >= self._settings.failure_threshold
        ):
            self._transition(key, breaker, BreakerState.OPEN)

    def open_keys(self) -> list[str]:
        return [key for key in list(self._breakers) if self.state(key) is not BreakerState.CLOSED]

    def _maybe_half_open(self, key: str, breaker: _Breaker) -> None:
        if breaker.state is BreakerState.OPEN and self._clock() - breaker.opened_at >= self._settings.open_s:
            self._transition(key, breaker, BreakerState.HALF_OPEN)

    def _transition(self, key: str, breaker: _Breaker, state: BreakerState) -> None:
        previous = breaker.state
        breaker.state = state
        if state is BreakerState.OPEN:
            breaker.opened_at = self._clock()
            breaker.probes = 0
        if state is BreakerState.CLOSED:
            breaker.failures = 0
            breaker.probes = 0
        level = logging.WARNING if state is BreakerState.OPEN else logging.INFO
        log.log(
            level,
            "circuit breaker %s %s: %s -> %s (%d failures in a row)",
            self.kind,
            key,
            previous.name.lower(),
            state.name.lower(),
            breaker.failures,
        )
        metrics.BREAKER_TRANSITIONS.labels(kind=self.kind, to=state.name.lower()).inc()
        metrics.BREAKER_STATE.labels(kind=self.kind, key=key).set(state.value)

    def _evict(self) -> None:
        if len(self._breakers) <= self.MAX_KEYS:
            return
        for key in list(self._breakers):
            if len(self._breakers) <= self.MAX_KEYS:
                return
            if self._breakers[key].state is BreakerState.CLOSED:
                del self._breakers[key]
                # Its gauge series goes too (a breaker that never opened has none).
                with contextlib.suppress(KeyError):
                    metrics.BREAKER_STATE.remove(self.kind, key)
