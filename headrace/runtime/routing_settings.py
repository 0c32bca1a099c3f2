"""Typed settings of the router's routing layer: the `routing:` section of
the config. Routes compose policies per alias; canaries, fallbacks, the
retry budget and circuit breakers are per model. Everything here is part of
the model registry and is reloaded with it (see services/router/routing/).

    routing:
      routes:
        chat:                        # an alias (aliases: {chat: smollm2})
          policies:
            - kind: fast_accurate    # cheap model for easy requests
              fast: smollm2-fast
              accurate: smollm2
              cascade: {}            # answer fast, escalate when the check fails
            - kind: ab               # weighted, sticky split
              arms: [{name: a, target: smollm2@2, weight: 90}, {name: b, target: smollm2@3, weight: 10}]
      canaries:
        smollm2: {version: "3", steps: [5, 25, 50], min_requests: 200}
      fallbacks:
        smollm2: [smollm2-fast]
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Set
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


# Words that mark a request as needing the stronger model. Lowercase; matched
# as substrings of the lowercased request text.
DEFAULT_HARD_MARKERS: tuple[str, ...] = (
    "step by step",
    "prove",
    "proof",
    "derive",
    "explain why",
    "analy",
    "compare",
    "trade-off",
    "tradeoff",
    "write a function",
    "write code",
    "implement",
    "debug",
    "refactor",
    "algorithm",
    "calculate",
    "solve",
    "reason",
    "essay",
    "summarize",
    "translate",
    "```",
)

# Answers that say the model could not do it: the cascade escalates them.
DEFAULT_UNCERTAIN_MARKERS: tuple[str, ...] = (
    "i don't know",
    "i do not know",
    "i'm not sure",
    "i am not sure",
    "i cannot",
    "i can't",
    "not able to",
)


class EmbeddingScorerSettings(_Section):
    """A nearest-centroid classifier over sentence embeddings (the offline
    all-MiniLM-L6-v2): how much closer a request is to the hard examples
    than to the easy ones."""

    easy_examples: list[str] = Field(min_length=1, max_length=256)
    hard_examples: list[str] = Field(min_length=1, max_length=256)
    # Similarity difference (hard - easy) that maps to a score of ~0.73.
    scale: float = Field(default=0.1, gt=0)


class ScorerSettings(_Section):
    """How hard a request looks, from 0 (easy) to 1 (hard): a weighted mean
    of its length, task markers and (optionally) an embedding classifier."""

    # Estimated prompt tokens at which the length signal saturates at 1.
    long_prompt_tokens: int = Field(default=400, ge=1)
    # A requested completion this long or longer counts as hard too.
    long_completion_tokens: int = Field(default=512, ge=1)
    markers: list[str] = Field(default_factory=lambda: list(DEFAULT_HARD_MARKERS), max_length=256)
    # Marker hits at which the marker signal saturates at 1.
    markers_to_saturate: int = Field(default=1, ge=1)
    length_weight: float = Field(default=0.4, ge=0)
    marker_weight: float = Field(default=0.6, ge=0)
    embedding_weight: float = Field(default=0.0, ge=0)
    embedding: EmbeddingScorerSettings | None = None

    @model_validator(mode="after")
    def _weights(self) -> ScorerSettings:
        if self.length_weight + self.marker_weight + self.embedding_weight <= 0:
            raise ValueError("scorer: at least one of length_weight, marker_weight, embedding_weight must be > 0")
        if self.embedding_weight > 0 and self.embedding is None:
            raise ValueError("scorer: embedding_weight > 0 needs an embedding block (easy_examples, hard_examples)")
        self.markers = [m.lower() for m in self.markers if m.strip()]
        return self


class CascadeSettings(_Section):
    """Answer with the fast model first; escalate to the accurate one when
    the fast answer fails these checks. The fast answer is held back (not
    streamed) until it passed, so a cascaded stream starts later."""

    # An answer cut off by the fast try's own smaller budget (fast_max_tokens)
    # needed more room than a quick answer: escalate it. (A cut at the
    # client's own max_tokens is not the fast model's fault: the accurate
    # model would be cut off there too.)
    escalate_on_truncation: bool = True
    # Answers shorter than this (characters, stripped) are not answers.
    min_answer_chars: int = Field(default=1, ge=0)
    uncertain_markers: list[str] = Field(default_factory=lambda: list(DEFAULT_UNCERTAIN_MARKERS), max_length=256)
    # The fast try's completion budget, when below the client's (0: the client's own).
    fast_max_tokens: int = Field(default=0, ge=0)


class FastAccuratePolicySettings(_Section):
    kind: Literal["fast_accurate"] = "fast_accurate"
    # Targets: a model, a pinned version or another alias.
    fast: str
    accurate: str
    # Requests scoring at or above this go to the accurate target.
    threshold: float = Field(default=0.5, ge=0, le=1)
    scorer: ScorerSettings = Field(default_factory=ScorerSettings)
    cascade: CascadeSettings | None = None


class ArmSettings(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
    target: str
    weight: float = Field(ge=0)


class AbPolicySettings(_Section):
    kind: Literal["ab"] = "ab"
    # Names the experiment in metrics and stats (default: the alias).
    experiment: str = Field(default="", pattern=r"^[A-Za-z0-9_.\-]{0,64}$")
    # What keeps a caller on one arm: the request's `user`, its
    # `session_id`, or the user and else the session. With none of them a
    # request's arm is drawn at random.
    sticky: Literal["user", "session", "user_or_session"] = "user_or_session"
    arms: list[ArmSettings] = Field(min_length=1, max_length=16)

    @field_validator("arms")
    @classmethod
    def _arms(cls, arms: list[ArmSettings]) -> list[ArmSettings]:
        names = [arm.name for arm in arms]
        if len(set(names)) != len(names):
            raise ValueError(f"ab: arm names must be unique, got {names}")
        if sum(arm.weight for arm in arms) <= 0:
            raise ValueError("ab: the arms' weights must add up to more than 0")
        return arms


PolicySettings = Annotated[FastAccuratePolicySettings | AbPolicySettings, Field(discriminator="kind")]


class RouteSettings(_Section):
    """The policies of one alias, applied in order: each may replace the
    target the previous one chose."""

    policies: list[PolicySettings] = Field(min_length=1, max_length=8)


class CanarySloSettings(_Section):
    """A canary breaches when, over one step, any of these holds (each
    relative to the stable version over the same step)."""

    # canary TTFT p95 > ratio x stable TTFT p95 + slack.
    ttft_p95_ratio: float = Field(default=1.5, ge=1)
    ttft_p95_slack_ms: float = Field(default=10.0, ge=0)
    # canary error rate > stable error rate + margin (0.02: 2 points).
    error_rate_margin: float = Field(default=0.02, ge=0, le=1)
    # canary cost per request > ratio x stable's.
    cost_ratio: float = Field(default=1.25, ge=1)


class CanarySettings(_Section):
    """A new version of a model takes a growing share of the requests that
    resolve to the model's default version, step by step."""

    version: str
    # Percent of traffic per step, increasing, each below 100; passing the
    # last step promotes the canary (it then takes all traffic).
    steps: list[float] = Field(default_factory=lambda: [5.0, 25.0, 50.0], min_length=1, max_length=16)
    # Canary requests (attempts) a step must see before it is judged...
    min_requests: int = Field(default=100, ge=1)
    # ... and stable ones, for the baseline.
    min_baseline_requests: int = Field(default=50, ge=1)
    # And the least time a step is held.
    min_step_s: float = Field(default=0.0, ge=0)
    slo: CanarySloSettings = Field(default_factory=CanarySloSettings)
    # Bump to start over with the same versions (e.g. after a rollback).
    attempt: int = Field(default=1, ge=1)

    @field_validator("steps")
    @classmethod
    def _steps(cls, steps: list[float]) -> list[float]:
        if any(not 0 < s < 100 for s in steps):
            raise ValueError(f"canary steps are percents between 0 and 100 (exclusive), got {steps}")
        if any(b <= a for a, b in itertools.pairwise(steps)):
            raise ValueError(f"canary steps must increase, got {steps}")
        return steps


class RetrySettings(_Section):
    """Retries of failures before the first token: a token bucket per
    router replica (each request adds `budget_ratio`, and `budget_min_per_s`
    arrive each second; a retry takes one), so retries stay a bounded share
    of the traffic however much fails. Backoff: full jitter."""

    budget_ratio: float = Field(default=0.2, ge=0, le=1)
    budget_min_per_s: float = Field(default=1.0, ge=0)
    budget_capacity: float = Field(default=20.0, ge=1)
    backoff_base_ms: float = Field(default=20.0, ge=0)
    backoff_max_ms: float = Field(default=500.0, ge=0)


class CircuitBreakerSettings(_Section):
    """Per worker and per model version, per router replica: this many
    failures in a row open the circuit; after open_s it lets probes through
    (half-open); a probe's success closes it, a failure opens it again."""

    failure_threshold: int = Field(default=5, ge=1)
    open_s: float = Field(default=10.0, gt=0)
    half_open_probes: int = Field(default=1, ge=1)
    # A request that runs out of its deadline counts against its worker and
    # model only if the attempt ran at least this long: a client's short
    # deadline (x-headrace-timeout, a gRPC timeout) says nothing of a worker
    # answering at its usual pace, and must not open circuits for everyone
    # else; a worker that hangs still trips it (the default deadline is
    # router.request_timeout_s, 600 s).
    deadline_counts_after_s: float = Field(default=10.0, ge=0)


class ReloadSettings(_Section):
    # Poll HEADRACE_CONFIG for changes (besides SIGHUP and the ReloadConfig RPC).
    watch: bool = True
    poll_interval_s: float = Field(default=2.0, gt=0)


class RoutingSettings(_Section):
    routes: dict[str, RouteSettings] = Field(default_factory=dict)
    canaries: dict[str, CanarySettings] = Field(default_factory=dict)
    # model -> targets to try, in order, when it fails before the first token.
    fallbacks: dict[str, list[str]] = Field(default_factory=dict)
    retry: RetrySettings = Field(default_factory=RetrySettings)
    circuit_breaker: CircuitBreakerSettings = Field(default_factory=CircuitBreakerSettings)
    reload: ReloadSettings = Field(default_factory=ReloadSettings)
    # Tenants that may call ReloadConfig (open dev mode: anyone on loopback).
    admin_tenants: list[str] = Field(default_factory=list)
    # How long a router replica trusts its copy of the canary state (Redis).
    state_ttl_s: float = Field(default=1.0, gt=0)

    def check_references(self, versions: Mapping[str, Set[str]], aliases: Mapping[str, str]) -> None:
        """Every name a route, canary or fallback uses must exist.
        `versions`: model -> its versions (removed ones excluded)."""

        def check_target(where: str, target: str) -> None:
            base, _, version = target.partition("@")
            if base in aliases and not version:
                return
            if base not in versions:
                raise ValueError(f"{where}: unknown target {target!r} (not a model or alias)")
            if version and version not in versions[base]:
                raise ValueError(f"{where}: model {base!r} has no served version {version!r}")

        for alias, route in self.routes.items():
            if alias not in aliases:
                raise ValueError(f"routing.routes.{alias}: not an alias; add it under aliases (its default target)")
            for index, policy in enumerate(route.policies):
                where = f"routing.routes.{alias}.policies[{index}]"
                if isinstance(policy, FastAccuratePolicySettings):
                    check_target(where + ".fast", policy.fast)
                    check_target(where + ".accurate", policy.accurate)
                else:
                    for arm in policy.arms:
                        check_target(f"{where}.arms.{arm.name}", arm.target)
        _check_no_cycles(self.routes)
        for model, canary in self.canaries.items():
            if model not in versions:
                raise ValueError(f"routing.canaries.{model}: unknown model")
            if canary.version not in versions[model]:
                raise ValueError(f"routing.canaries.{model}: model has no served version {canary.version!r}")
        for model, targets in self.fallbacks.items():
            if model not in versions:
                raise ValueError(f"routing.fallbacks.{model}: unknown model")
            for target in targets:
                if target.partition("@")[0] not in versions:
                    raise ValueError(f"routing.fallbacks.{model}: {target!r} is not a model or model version")


def route_targets(route: RouteSettings) -> list[str]:
    targets: list[str] = []
    for policy in route.policies:
        if isinstance(policy, FastAccuratePolicySettings):
            targets += [policy.fast, policy.accurate]
        else:
            targets += [arm.target for arm in policy.arms]
    return targets


def _check_no_cycles(routes: Mapping[str, RouteSettings]) -> None:
    """Routes may point at other routed aliases (nesting), never in a loop."""

    def visit(alias: str, path: tuple[str, ...]) -> None:
        if alias in path:
            raise ValueError(f"routing.routes: aliases route in a loop: {' -> '.join((*path, alias))}")
        route = routes.get(alias)
        if route is None:
            return
        for target in route_targets(route):
            if "@" not in target:
                visit(target, (*path, alias))

    for alias in routes:
        visit(alias, ())
