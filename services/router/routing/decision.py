"""The routing layer's vocabulary: what a policy sees of a request, the
choice policies pass along, the decision the generation flow acts on, and
the outcome it reports back."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

from headrace.models.registry import Resolution
from headrace.request_rules.token_estimate import estimate_tokens


@dataclass(frozen=True)
class RoutingRequest:
    """What policies may look at; no gRPC types."""

    request_id: str
    tenant: str
    # The `model` the client sent ("" when it named none).
    model: str
    # The prompt, or the chat messages' contents joined by newlines.
    text: str
    user: str = ""
    session_id: str = ""
    # The completion budget the client asked for (0: the model's default).
    max_tokens: int = 0

    @property
    def prompt_tokens_estimate(self) -> int:
        return estimate_tokens(len(self.text))


class AnswerCheck(Protocol):
    """Judges a fast answer in a cascade."""

    def failure(self, text: str, *, truncated: bool) -> str | None:
        """Why the answer is not good enough, or None when it passes."""
        ...


@dataclass(frozen=True)
class CascadePlan:
    """Answer with the chosen (fast) target first; escalate to `escalate_to`
    when the answer fails `check`."""

    route: str
    check: AnswerCheck
    escalate_to: str
    # Completion budget of the fast attempt (0: the request's own).
    fast_max_tokens: int = 0


@dataclass(frozen=True)
class RequestOutcome:
    """How a routed request went, for the observers of its decision."""

    @dataclass(frozen=True)
    class Attempt:
        model_version: str
        worker_id: str
        # gRPC status name of the failure; "" when the attempt succeeded.
        error: str = ""
        # From the attempt's start (placement included) to its first token.
        ttft_s: float | None = None
        total_s: float | None = None
        completion_tokens: int = 0
        cost_usd: float = 0.0

    attempts: tuple[Attempt, ...]
    error: str = ""
    ttft_s: float | None = None
    total_s: float | None = None
    completion_tokens: int = 0
    cost_usd: float = 0.0

    @property
    def cancelled(self) -> bool:
        return self.error == "CANCELLED"


# Called with the outcome off the critical path (a background task).
OutcomeObserver = Callable[[RequestOutcome], Awaitable[None]]


@dataclass(frozen=True)
class Choice:
    """What the policies decided so far: a target (a model, "model@version"
    or an alias) and why, as reason tokens for x-headrace-route."""

    target: str
    reasons: tuple[str, ...]
    observers: tuple[OutcomeObserver, ...] = ()
    cascade: CascadePlan | None = None
    # Extra facts for the trace (e.g. the difficulty score).
    attributes: tuple[tuple[str, str | float], ...] = ()

    def to(self, target: str, reason: str, *, observer: OutcomeObserver | None = None) -> Choice:
        observers = self.observers if observer is None else (*self.observers, observer)
        return replace(self, target=target, reasons=(*self.reasons, reason), observers=observers)

    def with_attribute(self, key: str, value: str | float) -> Choice:
        return replace(self, attributes=(*self.attributes, (key, value)))


@dataclass(frozen=True)
class RouteDecision:
    """Which version serves a request, what to fall back to, and why."""

    request: RoutingRequest
    primary: Resolution
    reasons: tuple[str, ...]
    fallbacks: tuple[Resolution, ...] = ()
    observers: tuple[OutcomeObserver, ...] = ()
    cascade: CascadePlan | None = None
    attributes: tuple[tuple[str, str | float], ...] = field(default=())

    @property
    def reason(self) -> str:
        """The x-headrace-route value: reason tokens joined by commas, e.g.
        "alias:chat,fast", "default,canary", "alias:chat,ab:exp/b"."""
        return ",".join(self.reasons)
