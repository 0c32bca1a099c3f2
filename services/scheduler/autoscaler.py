"""How many workers each pool should have: a decision from what users feel
(queue wait and TTFT p95 against the pool's SLO), how busy the pool is
(leased + queued sequences against its slots) and what it costs (no more
workers than that needs, zero when idle if allowed). Knows nothing of gRPC
or of how workers are started: actuators read the number (the scheduler's
GetPoolStatus, the `headrace_scheduler_desired_workers` gauge that KEDA's
Prometheus trigger scales on, `headrace status`).

Up fast, down slow, never flapping:
- scale-up acts on the current recommendation, at most `max_scale_up_step`
  at a time and not again within `scale_up_cooldown_s`; a worker asked for
  counts as coming for `cold_start_s`, so a slow start is not answered with
  more and more workers;
- a clear rise in demand asks, as soon as the workers there and coming
  would be full before a new one could start (lead time), for what the
  demand expected by then needs (one more at least): the queue does not
  have to prove it first;
- scale-down takes the highest recommendation of the last
  `scale_down_window_s` (as Kubernetes' HPA stabilisation window does),
  waits `scale_down_cooldown_s` after any change, and never comes while
  demand clearly rises;
- the result always lies within [min_workers, max_workers] (0 only with
  scale_to_zero, after `idle_before_zero_s` without demand).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from headrace.runtime.config import AutoscaleSettings

log = logging.getLogger(__name__)


class SampleWindow:
    """Recent observations (queue waits, TTFTs, demand) and their p95 or
    mean over a sliding time window; bounded so a flood of samples cannot
    grow it."""

    def __init__(self, window_s: float, max_samples: int = 4096) -> None:
        self._window_s = window_s
        self._samples: deque[tuple[float, float]] = deque(maxlen=max_samples)

    def add(self, now: float, value: float) -> None:
        self._samples.append((now, value))

    def _trim(self, now: float) -> None:
        cutoff = now - self._window_s
        while self._samples and self._samples[0][0] < cutoff:
            self._samples.popleft()

    def mean(self, now: float) -> float | None:
        self._trim(now)
        if not self._samples:
            return None
        return sum(value for _, value in self._samples) / len(self._samples)

    def trend(self, now: float, *, min_samples: int = 8) -> tuple[float, float] | None:
        """The least-squares slope of the values per second over the window,
        and its standard error; None with too few samples to tell."""
        self._trim(now)
        n = len(self._samples)
        if n < min_samples:
            return None
        mean_t = sum(t for t, _ in self._samples) / n
        mean_v = sum(v for _, v in self._samples) / n
        sxx = sum((t - mean_t) ** 2 for t, _ in self._samples)
        if sxx <= 0:
            return None
        slope = sum((t - mean_t) * (v - mean_v) for t, v in self._samples) / sxx
        residuals = sum((v - mean_v - slope * (t - mean_t)) ** 2 for t, v in self._samples)
        return slope, math.sqrt(residuals / (n - 2) / sxx)

    def p95(self, now: float) -> float | None:
        self._trim(now)
        if not self._samples:
            return None
        values = sorted(value for _, value in self._samples)
        return values[min(len(values) - 1, math.ceil(0.95 * len(values)) - 1)]


@dataclass(frozen=True)
class PoolSignals:
    """One reading of a pool, taken by the scheduler."""

    now: float
    # Workers reporting in and accepting work.
    workers: int
    # Sequences waiting for a slot, and holding one.
    queued: int
    leased: int
    # Sequences one worker holds at once (the pool's slots over its workers,
    # or the configured default while it has none).
    slots_per_worker: float
    queue_wait_p95_s: float | None = None
    ttft_p95_s: float | None = None
    # Mean of queued + leased over the window: what sizing follows (one
    # reading is noisy: Poisson arrivals leave a pool idle half the time at
    # a load one worker carries easily, and bursty the next moment).
    mean_demand: float | None = None
    # How fast demand grows (sequences per second), when the window shows a
    # clear rise; 0 when flat, falling or lost in the noise.
    demand_rising_per_s: float = 0.0
    # A cheaper pool serving the same work can still grow: SLO breaches and
    # rises are its to answer (spill_sizing.py), this pool sizes on demand.
    defer_to_cheaper: bool = False

    @property
    def demand(self) -> float:
        return self.queued + self.leased if self.mean_demand is None else self.mean_demand


@dataclass(frozen=True)
class Decision:
    desired: int
    # Why, in words an operator reads in a log line or `headrace status`.
    reason: str
    # Whether this reading changed the number.
    changed: bool = False


class Autoscaler:
    """The decision for one pool; call `decide` with each new reading."""

    def __init__(self, pool: str, settings: AutoscaleSettings, *, initial: int) -> None:
        self.pool = pool
        self.settings = settings
        self._desired = self._clamp(initial)
        self._reason = "start"
        self._last_up_at: float | None = None
        self._last_change_at: float | None = None
        self._last_down_at: float | None = None
        # (time, recommendation) for the scale-down stabilisation window.
        self._recommendations: deque[tuple[float, int]] = deque()
        self._idle_since: float | None = None
        self.changes = 0

    @property
    def desired(self) -> int:
        return self._desired

    @property
    def reason(self) -> str:
        return self._reason

    def workers_coming(self, now: float, workers: int) -> bool:
        """Workers asked for are not serving yet, and the ask is younger
        than a cold start (past it, they are late, not coming)."""
        return (
            self._last_up_at is not None
            and now - self._last_up_at < self.settings.cold_start_s
            and workers < self._desired
        )

    def _clamp(self, count: int) -> int:
        low = 0 if self.settings.scale_to_zero else max(1, self.settings.min_workers)
        low = max(low, self.settings.min_workers)
        return max(low, min(self.settings.max_workers, count))

    def recommend(self, signals: PoolSignals) -> tuple[int, str]:
        """What this reading alone asks for, and why (before cooldowns)."""
        s = self.settings
        per_worker = max(1.0, signals.slots_per_worker)
        # Workers asked for but not reporting yet count as coming while a
        # cold start lasts: do not answer a slow start with more workers.
        starting = self.workers_coming(signals.now, signals.workers)
        effective = self._desired if starting else signals.workers
        wanted = math.ceil(signals.demand / (per_worker * s.target_utilisation)) if signals.demand else 0
        reason = f"demand {signals.demand:.1f} sequences at {per_worker:g} per worker, target {s.target_utilisation:g}"
        breach = "" if signals.defer_to_cheaper else self._slo_breach(signals)
        if breach and signals.queued > 0 and not starting:
            # Users wait and work queues: one more than there is, at least.
            if effective + 1 > wanted:
                wanted, reason = effective + 1, breach
        lead, expected = self._lead_time_shortfall(signals, per_worker)
        if lead:
            # Enough for the demand expected when a worker asked now would
            # serve, at the target utilisation, and one more at least: a
            # steep ramp asked for one at a time is a cooldown behind at
            # every step (bench-autoscale's 20 s ramp: the 4th worker came
            # 10 s after the 3rd, while the queue built).
            ahead = max(self._desired + 1, math.ceil(expected / (per_worker * s.target_utilisation)))
            if ahead > wanted:
                wanted, reason = ahead, lead
        if signals.demand_rising_per_s > 0 and wanted < self._desired:
            # A clear rise is no time to give a worker back: the mean lags
            # it (bench-autoscale's 60 s ramp went from 4 workers to 2
            # halfway up and queued past the SLO at the top).
            wanted = self._desired
            reason = f"demand still rising {signals.demand_rising_per_s:.2f}/s: holding {self._desired} workers"
        if signals.demand == 0:
            if self._idle_since is None:
                self._idle_since = signals.now
            idle_s = signals.now - self._idle_since
            if s.scale_to_zero and idle_s >= s.idle_before_zero_s:
                return 0, f"idle for {idle_s:.0f}s: scale to zero"
            return self._clamp(1), "idle"
        self._idle_since = None
        if effective == 0:
            # Nothing runs and work waits: a worker now, whatever the rest says.
            reason = f"cold start: {signals.demand} waiting, first worker in ~{s.cold_start_s:g}s"
            wanted = max(wanted, 1)
        return self._clamp(wanted), reason

    def _lead_time_shortfall(self, signals: PoolSignals, per_worker: float) -> tuple[str, float]:
        """A worker asked for now serves only after a cold start. If demand
        keeps rising as it does, will the workers there and coming be full
        before then? Then say why, and the demand expected by then:
        waiting for the queue to prove it costs a cold start of users
        waiting (a 10x ramp fills a worker in seconds). A rise that stops
        leaves at most what one cold start of it would have needed, which
        scale-down takes back. ("", 0) when there is no shortfall."""
        s = self.settings
        rising = signals.demand_rising_per_s
        if rising <= 0 or self._desired == 0 or signals.defer_to_cheaper:
            return "", 0.0
        if self._last_down_at is not None and signals.now - self._last_down_at < s.scale_down_cooldown_s:
            # A worker just left: its work moving to the others looks like a
            # rise, and answering it would be a flap (seen with vLLM: up
            # again 6 s after a scale-down). The SLO rule still acts.
            return "", 0.0
        # The window's mean lags its newest reading by half a window.
        horizon_s = s.cold_start_s + s.window_s / 2
        expected = signals.demand + rising * horizon_s
        capacity = self._desired * per_worker
        if expected <= capacity:
            return "", 0.0
        return (
            f"demand rising {rising:.2f}/s: {expected:.1f} sequences expected in {horizon_s:.0f}s, "
            f"over the {capacity:g} slots of {self._desired} workers"
        ), expected

    def _slo_breach(self, signals: PoolSignals) -> str:
        s = self.settings
        if signals.ttft_p95_s is not None and signals.ttft_p95_s > s.ttft_slo_s:
            return f"TTFT p95 {signals.ttft_p95_s:.2f}s over the SLO {s.ttft_slo_s:g}s"
        if signals.queue_wait_p95_s is not None and signals.queue_wait_p95_s > s.queue_wait_slo_s:
            return f"queue wait p95 {signals.queue_wait_p95_s:.2f}s over the SLO {s.queue_wait_slo_s:g}s"
        return ""

    def decide(self, signals: PoolSignals) -> Decision:
        s = self.settings
        now = signals.now
        wanted, why = self.recommend(signals)
        self._recommendations.append((now, wanted))
        while self._recommendations and self._recommendations[0][0] < now - s.scale_down_window_s:
            self._recommendations.popleft()
        current = self._desired
        if wanted > current:
            if self._last_up_at is not None and now - self._last_up_at < s.scale_up_cooldown_s:
                return Decision(current, self._reason)
            return self._change(now, min(wanted, current + s.max_scale_up_step), why, up=True)
        if wanted < current:
            if self._last_change_at is not None and now - self._last_change_at < s.scale_down_cooldown_s:
                return Decision(current, self._reason)
            # The highest recommendation of the window: a dip is not a trend.
            # Zero comes only from a whole idle period, its own stabilisation.
            floor = 0 if wanted == 0 else max(value for _, value in self._recommendations)
            if floor < current:
                return self._change(now, floor, why, up=False)
        return Decision(current, self._reason)

    def _change(self, now: float, desired: int, why: str, *, up: bool) -> Decision:
        previous = self._desired
        self._desired = desired
        self._reason = why
        self._last_change_at = now
        if up:
            self._last_up_at = now
        else:
            self._last_down_at = now
        self.changes += 1
        log.info("pool %s: desired workers %d -> %d (%s)", self.pool, previous, desired, why)
        return Decision(desired, why, changed=True)


class PoolAutoscaling:
    """The decisions of every pool and the samples they read: queue waits of
    online work (batch waits by design) and TTFTs the router reports on
    Release. A pool with autoscaling off keeps its configured worker count."""

    def __init__(self, settings_for: Callable[[str], AutoscaleSettings], configured: Mapping[str, int]) -> None:
        self._settings_for = settings_for
        self._configured = configured
        self._scalers: dict[str, Autoscaler] = {}
        self._waits: dict[str, SampleWindow] = {}
        self._ttfts: dict[str, SampleWindow] = {}
        self._demand: dict[str, SampleWindow] = {}

    def _window(self, table: dict[str, SampleWindow], pool: str) -> SampleWindow:
        window = table.get(pool)
        if window is None:
            window = table[pool] = SampleWindow(self._settings_for(pool).window_s)
        return window

    def observe_queue_wait(self, pool: str, now: float, wait_s: float) -> None:
        self._window(self._waits, pool).add(now, wait_s)

    def observe_ttft(self, pool: str, now: float, ttft_s: float) -> None:
        self._window(self._ttfts, pool).add(now, ttft_s)

    def evaluate(
        self,
        pool: str,
        *,
        now: float,
        workers: int,
        queued: int,
        leased: int,
        slots_per_worker: float,
        sized_demand: float | None = None,
        defer_to_cheaper: bool = False,
    ) -> Decision:
        """`sized_demand`: the demand to size for instead of queued + leased
        (a pool's share of its group's, spill_sizing.py)."""
        settings = self._settings_for(pool)
        if not settings.enabled:
            configured = self._configured.get(pool, workers)
            return Decision(configured, "autoscaling off: the configured worker count")
        scaler = self._scalers.get(pool)
        if scaler is None:
            scaler = self._scalers[pool] = Autoscaler(pool, settings, initial=self._configured.get(pool, workers))
        demand = self._window(self._demand, pool)
        demand.add(now, queued + leased if sized_demand is None else sized_demand)
        return scaler.decide(
            PoolSignals(
                now=now,
                workers=workers,
                queued=queued,
                leased=leased,
                slots_per_worker=slots_per_worker,
                queue_wait_p95_s=self._window(self._waits, pool).p95(now),
                ttft_p95_s=self._window(self._ttfts, pool).p95(now),
                mean_demand=demand.mean(now),
                demand_rising_per_s=_clear_rise(demand.trend(now)),
                defer_to_cheaper=defer_to_cheaper,
            )
        )

    def workers_coming(self, pool: str, now: float, workers: int) -> bool:
        """The pool asked for workers that are still within their cold start."""
        scaler = self._scalers.get(pool)
        return scaler is not None and scaler.workers_coming(now, workers)

    def decision(self, pool: str, workers: int) -> Decision:
        """The last decision, without a new reading (status calls)."""
        scaler = self._scalers.get(pool)
        if scaler is None:
            return Decision(self._configured.get(pool, workers), "autoscaling off: the configured worker count")
        return Decision(scaler.desired, scaler.reason)


def _clear_rise(trend: tuple[float, float] | None) -> float:
    """The rise we are fairly sure of: the slope less two standard errors (0
    when that is not above flat). To trip the lead-time rule a steady load's
    noise would have to look like a rise that fills the pool within a cold
    start, several errors more (tests/unit/scheduler: none in 30 simulated
    hours); a real ramp trips it 6-15 s in (three errors: 11-15 s)."""
    if trend is None:
        return 0.0
    slope, stderr = trend
    return max(0.0, slope - 2 * stderr)
