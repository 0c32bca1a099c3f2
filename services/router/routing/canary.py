"""Canaries that roll themselves back.

A canary moves a new version of a model through steps (e.g. 5%, 25%, 50%
of the requests that resolve to the model's default version). A step is
judged once it has seen `min_requests` canary attempts and
`min_baseline_requests` stable ones (and lasted `min_step_s`): the canary's
TTFT p95, error rate and cost per request, each against the stable
version's over the same step. A breach rolls it back to 0% at once, and
says why; a pass moves to the next step; passing the last step promotes it
(the model's name then resolves to it).

The state lives in Redis, so every router replica routes by the same step
and a restarted router carries on where it was:

    headrace:routing:canary:<model>          hash: run, stable, canary, step, status, reason, ...
    headrace:routing:canary:<model>:events   the last 50 transitions (JSON)
    headrace:routing:stats:canary:<model>:<run>:<step>:{canary,stable}   arm_stats.py

A run is identified by "<stable>-><canary>#<attempt>": a new version, a new
stable version or a bumped `attempt` starts over at the first step.
Transitions are compare-and-set (Lua), so of two replicas judging the same
step at once only one moves it.
"""

from __future__ import annotations

import enum
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from headrace.runtime.routing_settings import CanarySettings
from services.router.routing import metrics
from services.router.routing.arm_stats import ArmStatsStore, ArmSummary, Sample
from services.router.routing.decision import RequestOutcome

log = logging.getLogger(__name__)

KEY_PREFIX = "headrace:routing:canary:"
_EVENTS_KEPT = 50
# A stable request may trigger a judgement at most this often (stable is
# the large arm; the canary's own requests always may).
_STABLE_TRIGGER_INTERVAL_S = 0.2
_RETRY_UNREADABLE_S = 1.0

_INIT = """
if redis.call('HGET', KEYS[1], 'run') ~= ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], unpack(ARGV, 2))
end
return redis.call('HGETALL', KEYS[1])
"""

_TRANSITION = """
if redis.call('HGET', KEYS[1], 'run') == ARGV[1]
   and redis.call('HGET', KEYS[1], 'step') == ARGV[2]
   and redis.call('HGET', KEYS[1], 'status') == 'running' then
  redis.call('HSET', KEYS[1], unpack(ARGV, 3))
  return 1
end
return 0
"""


class CanaryStatus(enum.Enum):
    RUNNING = "running"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"


@dataclass(frozen=True)
class CanaryState:
    run: str
    stable: str
    canary: str
    # 0-based index into the steps.
    step: int
    status: CanaryStatus
    reason: str
    updated_ms: int
    step_started_ms: int

    def to_fields(self) -> dict[str, str]:
        return {
            "run": self.run,
            "stable": self.stable,
            "canary": self.canary,
            "step": str(self.step),
            "status": self.status.value,
            "reason": self.reason,
            "updated_ms": str(self.updated_ms),
            "step_started_ms": str(self.step_started_ms),
        }

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> CanaryState:
        return cls(
            run=fields["run"],
            stable=fields["stable"],
            canary=fields["canary"],
            step=int(fields["step"]),
            status=CanaryStatus(fields["status"]),
            reason=fields.get("reason", ""),
            updated_ms=int(fields.get("updated_ms", "0")),
            step_started_ms=int(fields.get("step_started_ms", "0")),
        )


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reason: str


def judge(canary: ArmSummary, stable: ArmSummary, settings: CanarySettings) -> Verdict | None:
    """The verdict on one step, or None while it has seen too few requests."""
    if canary.requests < settings.min_requests or stable.requests < settings.min_baseline_requests:
        return None
    slo = settings.slo
    breaches: list[str] = []
    if canary.error_rate > stable.error_rate + slo.error_rate_margin:
        breaches.append(
            f"error rate {canary.error_rate:.1%} > stable {stable.error_rate:.1%} + {slo.error_rate_margin:.1%}"
        )
    canary_p95 = canary.ttft_quantile_ms(0.95)
    stable_p95 = stable.ttft_quantile_ms(0.95)
    if canary.ok and stable.ok and canary_p95 > slo.ttft_p95_ratio * stable_p95 + slo.ttft_p95_slack_ms:
        breaches.append(
            f"TTFT p95 {canary_p95:.1f} ms > {slo.ttft_p95_ratio:g} x stable {stable_p95:.1f} ms"
            f" + {slo.ttft_p95_slack_ms:g} ms"
        )
    canary_cost, stable_cost = canary.cost_per_request, stable.cost_per_request
    if stable_cost > 0 and canary_cost > slo.cost_ratio * stable_cost:
        breaches.append(f"cost per request {canary_cost:.3g} USD > {slo.cost_ratio:g} x stable {stable_cost:.3g} USD")
    seen = f"{canary.requests} canary / {stable.requests} stable requests"
    if breaches:
        return Verdict(passed=False, reason="; ".join(breaches) + f" ({seen})")
    return Verdict(
        passed=True,
        reason=(
            f"within SLO: TTFT p95 {canary_p95:.1f} vs {stable_p95:.1f} ms, errors {canary.error_rate:.1%} vs "
            f"{stable.error_rate:.1%}, cost {canary_cost:.3g} vs {stable_cost:.3g} USD ({seen})"
        ),
    )


@dataclass(frozen=True)
class CanarySnapshot:
    """A canary as ListModels shows it."""

    model: str
    state: CanaryState
    share: float
    steps: int
    canary_stats: ArmSummary
    stable_stats: ArmSummary


class CanaryController:
    """One model's canary, as one router replica sees it."""

    def __init__(
        self,
        model: str,
        stable_version: str,
        settings: CanarySettings,
        redis: aioredis.Redis,
        stats: ArmStatsStore,
        *,
        state_ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.model = model
        self.settings = settings
        self.stable_version = stable_version
        self.run = f"{stable_version}->{settings.version}#{settings.attempt}"
        self._redis = redis
        self._stats = stats
        self._state_ttl_s = state_ttl_s
        self._clock = clock
        self._wall_clock = wall_clock
        self._key = KEY_PREFIX + model
        self._init_script = redis.register_script(_INIT)
        self._transition_script = redis.register_script(_TRANSITION)
        self._cached: CanaryState | None = None
        self._cached_until = 0.0
        self._last_stable_trigger = 0.0

    @property
    def canary_model_version(self) -> str:
        return f"{self.model}@{self.settings.version}"

    @property
    def stable_model_version(self) -> str:
        return f"{self.model}@{self.stable_version}"

    def share(self, state: CanaryState) -> float:
        if state.status is CanaryStatus.PROMOTED:
            return 1.0
        if state.status is CanaryStatus.ROLLED_BACK:
            return 0.0
        return self.settings.steps[min(state.step, len(self.settings.steps) - 1)] / 100.0

    async def state(self) -> CanaryState | None:
        """The current state (cached for state_ttl_s); None when Redis cannot
        be read: the caller then routes to the stable version."""
        now = self._clock()
        if now < self._cached_until:
            return self._cached
        fresh = self._fresh_state()
        try:
            raw = await self._init_script(keys=[self._key], args=[self.run, *_flatten(fresh.to_fields())])
        except RedisError as exc:
            metrics.STATE_ERRORS.labels(op="canary_read").inc()
            log.warning("canary %s: state unreadable (%s); routing to the stable version", self.model, exc)
            # Ask again only after a while: with Redis down, one request per
            # interval waits for the timeout, not every request.
            self._cached = None
            self._cached_until = self._clock() + max(self._state_ttl_s, _RETRY_UNREADABLE_S)
            return None
        state = CanaryState.from_fields(_pairs(raw))
        self._remember(state)
        return state

    async def observe(self, routed_in: CanaryState, outcome: RequestOutcome) -> None:
        """Count the attempts a request made on the canary or stable version
        in the step it was routed in; judge the step when it has enough."""
        for attempt in outcome.attempts:
            if attempt.error == "CANCELLED":
                continue
            if attempt.model_version == self.canary_model_version:
                arm = "canary"
            elif attempt.model_version == self.stable_model_version:
                arm = "stable"
            else:
                continue
            count = await self._stats.record(
                self._stats_key(routed_in, arm),
                Sample(
                    ok=not attempt.error,
                    ttft_ms=None if attempt.ttft_s is None else attempt.ttft_s * 1000.0,
                    total_ms=None if attempt.total_s is None else attempt.total_s * 1000.0,
                    completion_tokens=attempt.completion_tokens,
                    cost_usd=attempt.cost_usd,
                ),
            )
            if self._should_judge(arm, count):
                await self.judge_step(routed_in)

    async def judge_step(self, state: CanaryState) -> CanaryState | None:
        """Judge the step `state` is in; returns the new state when this call
        moved it (another replica may have been first)."""
        if state.status is not CanaryStatus.RUNNING:
            return None
        if self._wall_clock() * 1000.0 - state.step_started_ms < self.settings.min_step_s * 1000.0:
            return None
        canary, stable = await self._stats.read([self._stats_key(state, "canary"), self._stats_key(state, "stable")])
        verdict = judge(canary, stable, self.settings)
        if verdict is None:
            return None
        now_ms = int(self._wall_clock() * 1000)
        steps = self.settings.steps
        where = f"step {state.step + 1}/{len(steps)} ({steps[min(state.step, len(steps) - 1)]:g}%)"
        if not verdict.passed:
            new = CanaryState(
                state.run,
                state.stable,
                state.canary,
                state.step,
                CanaryStatus.ROLLED_BACK,
                f"rolled back at {where}: {verdict.reason}",
                now_ms,
                state.step_started_ms,
            )
        elif state.step + 1 < len(steps):
            new = CanaryState(
                state.run,
                state.stable,
                state.canary,
                state.step + 1,
                CanaryStatus.RUNNING,
                f"{where} passed, {verdict.reason}",
                now_ms,
                now_ms,
            )
        else:
            new = CanaryState(
                state.run,
                state.stable,
                state.canary,
                state.step,
                CanaryStatus.PROMOTED,
                f"promoted after {where}: {verdict.reason}",
                now_ms,
                state.step_started_ms,
            )
        moved = await self._transition_script(
            keys=[self._key], args=[state.run, str(state.step), *_flatten(new.to_fields())]
        )
        if not moved:
            self._cached_until = 0.0
            return None
        self._remember(new)
        await self._record_event(new)
        level = logging.WARNING if new.status is CanaryStatus.ROLLED_BACK else logging.INFO
        log.log(level, "canary %s@%s: %s", self.model, new.canary, new.reason)
        metrics.CANARY_TRANSITIONS.labels(model=self.model, version=new.canary, to=new.status.value).inc()
        return new

    async def snapshot(self) -> CanarySnapshot | None:
        state = await self.state()
        if state is None:
            return None
        try:
            canary, stable = await self._stats.read(
                [self._stats_key(state, "canary"), self._stats_key(state, "stable")]
            )
        except RedisError:
            canary, stable = ArmSummary(), ArmSummary()
        return CanarySnapshot(
            model=self.model,
            state=state,
            share=self.share(state),
            steps=len(self.settings.steps),
            canary_stats=canary,
            stable_stats=stable,
        )

    async def events(self) -> list[dict[str, object]]:
        raw = await self._redis.lrange(self._key + ":events", 0, _EVENTS_KEPT - 1)
        return [json.loads(item) for item in raw]

    def _fresh_state(self) -> CanaryState:
        now_ms = int(self._wall_clock() * 1000)
        return CanaryState(
            run=self.run,
            stable=self.stable_version,
            canary=self.settings.version,
            step=0,
            status=CanaryStatus.RUNNING,
            reason="started",
            updated_ms=now_ms,
            step_started_ms=now_ms,
        )

    def _remember(self, state: CanaryState) -> None:
        self._cached = state
        self._cached_until = self._clock() + self._state_ttl_s
        metrics.CANARY_SHARE.labels(model=self.model, version=state.canary).set(self.share(state))

    def _stats_key(self, state: CanaryState, arm: str) -> str:
        return f"canary:{self.model}:{state.run}:{state.step}:{arm}"

    def _should_judge(self, arm: str, count: int) -> bool:
        if arm == "canary":
            return count >= self.settings.min_requests
        if count < self.settings.min_baseline_requests:
            return False
        now = self._clock()
        if now - self._last_stable_trigger < _STABLE_TRIGGER_INTERVAL_S:
            return False
        self._last_stable_trigger = now
        return True

    async def _record_event(self, state: CanaryState) -> None:
        event = json.dumps({"at_ms": state.updated_ms, "run": state.run, "step": state.step, **_event(state)})
        try:
            pipe = self._redis.pipeline(transaction=False)
            pipe.lpush(self._key + ":events", event)
            pipe.ltrim(self._key + ":events", 0, _EVENTS_KEPT - 1)
            await pipe.execute()
        except RedisError as exc:
            metrics.STATE_ERRORS.labels(op="canary_event").inc()
            log.warning("canary %s: event not recorded (%s)", self.model, exc)


def _event(state: CanaryState) -> dict[str, str]:
    return {"status": state.status.value, "reason": state.reason}


def _flatten(fields: dict[str, str]) -> list[str]:
    return [item for pair in fields.items() for item in pair]


def _pairs(raw: list[bytes]) -> dict[str, str]:
    decoded = [item.decode() if isinstance(item, bytes) else str(item) for item in raw]
    return dict(zip(decoded[::2], decoded[1::2], strict=True))
