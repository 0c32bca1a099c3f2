"""One request's attempts, before its first token: which model version and
which workers to try next, and whether a retry may happen at all.

    attempt 1: the decided version, any worker whose circuit is not open
    a worker fails before the first token (UNAVAILABLE, INTERNAL):
        retry on another worker of the same version (the last try goes to
        the fallback model if there is one), after a backoff, if the retry
        budget has a token and attempts are left
    no worker serves the version, or its circuit is open:
        the next fallback model (no worker did any work, so no budget is spent)
    after the first token: no retry; the error reaches the client

Attempts count worker calls (router.max_attempts); moving to a fallback
after a failed placement is bounded by the number of fallbacks. Every
attempt is recorded for the decision's observers (canary error rates
count failed attempts, not just failed requests).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from opentelemetry import trace

from headrace.models.registry import Resolution
from headrace.runtime.errors import (
    Cancelled,
    DeadlineExceeded,
    HeadraceError,
    Internal,
    Unavailable,
    status_code_for,
)
from headrace.runtime.request_context import remaining_s
from services.router.routing import metrics
from services.router.routing.circuit_breaker import CircuitBreakers
from services.router.routing.decision import RequestOutcome, RouteDecision
from services.router.routing.retry_budget import Backoff, RetryBudget

log = logging.getLogger(__name__)


def is_retryable(error: HeadraceError) -> bool:
    """Failures another worker or model may not have: the worker was down or
    its engine broke. Not the client's errors, deadlines or backpressure."""
    return isinstance(error, (Unavailable, Internal)) or type(error) is HeadraceError


def breaker_verdict(error: HeadraceError) -> bool | None:
    """False: the failure counts against the worker and model; None: it says
    nothing about them (the client cancelled, or sent something wrong)."""
    if isinstance(error, Cancelled):
        return None
    if is_retryable(error) or isinstance(error, DeadlineExceeded):
        return False
    return None


@dataclass
class Attempt:
    number: int
    resolution: Resolution
    exclude_workers: tuple[str, ...]
    # The decision's reasons, plus "fallback:<version>" on a fallback.
    reasons: tuple[str, ...]
    started: float
    worker_id: str = ""

    @property
    def reason(self) -> str:
        return ",".join(self.reasons)


@dataclass
class AttemptPlan:
    decision: RouteDecision
    worker_breakers: CircuitBreakers
    model_breakers: CircuitBreakers
    budget: RetryBudget
    backoff: Backoff
    max_attempts: int
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    _index: int = 0
    _worker_calls: int = 0
    _excluded: dict[str, list[str]] = field(default_factory=dict)
    _attempts: list[RequestOutcome.Attempt] = field(default_factory=list)
    _open_model: str | None = None
    _open_worker: str | None = None
    _skipped: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._candidates = (self.decision.primary, *self.decision.fallbacks)
        self.budget.deposit()

    async def next(self) -> Attempt:
        """The next attempt to make; raises Unavailable when every candidate's
        circuit is open."""
        while self._index < len(self._candidates) and self.model_breakers.blocked(
            self._candidates[self._index].model_version
        ):
            skipped = self._candidates[self._index].model_version
            self._skipped.append(skipped)
            # Counts as a failed attempt of that version: a canary whose
            # circuit opened must still see its errors add up.
            self._attempts.append(RequestOutcome.Attempt(model_version=skipped, worker_id="", error="UNAVAILABLE"))
            self._index += 1
        if self._index >= len(self._candidates):
            raise self._all_circuits_open()
        if self._worker_calls:
            delay = self.backoff.delay_s(self._worker_calls)
            left = remaining_s()
            if left is not None:
                # Never sleep away the caller's deadline.
                delay = min(delay, max(0.0, left / 2))
            await self.sleep(delay)
        resolution = self._candidates[self._index]
        version = resolution.model_version
        reasons = self.decision.reasons
        if self._index > 0:
            reasons = (*reasons, f"fallback:{self.decision.primary.model_version}")
        # Workers that failed this request, and those whose circuit is open
        # (a half-open one stays eligible while it has a probe slot).
        excluded = set(self._excluded.get(version, ()))
        excluded.update(w for w in self.worker_breakers.open_keys() if self.worker_breakers.blocked(w))
        self.model_breakers.begin(version)
        self._open_model = version
        return Attempt(
            number=self._worker_calls + 1,
            resolution=resolution,
            exclude_workers=tuple(sorted(excluded)),
            reasons=reasons,
            started=self.clock(),
        )

    def placement_failed(self, attempt: Attempt, error: HeadraceError) -> bool:
        """Placement found no worker (or failed otherwise). True: try the next
        candidate."""
        self._record(attempt, error=error)
        no_worker = isinstance(error, Unavailable)
        # Workers we excluded ourselves (open circuits) say nothing new about the model.
        self._end_model(attempt, False if no_worker and not attempt.exclude_workers else None)
        if not no_worker:
            return False
        self._index += 1
        if self._index >= len(self._candidates):
            return False
        metrics.RETRIES.labels(model=attempt.resolution.model_version, kind="fallback").inc()
        self._event("headrace.fallback", attempt, error)
        return True

    def placed(self, attempt: Attempt, worker_id: str) -> None:
        attempt.worker_id = worker_id
        self._worker_calls += 1
        self.worker_breakers.begin(worker_id)
        self._open_worker = worker_id

    def worker_failed(self, attempt: Attempt, error: HeadraceError, *, after_first_token: bool) -> bool:
        """The worker call failed. True: make another attempt."""
        verdict = breaker_verdict(error)
        if (
            isinstance(error, DeadlineExceeded)
            and self.clock() - attempt.started < self.worker_breakers.deadline_counts_after_s
        ):
            # The client's own short deadline ran out: nothing said of the worker.
            verdict = None
        self._end_worker(attempt, verdict)
        self._end_model(attempt, verdict)
        self._record(attempt, error=error)
        if after_first_token or not is_retryable(error):
            return False
        version = attempt.resolution.model_version
        self._excluded.setdefault(version, []).append(attempt.worker_id)
        if self._worker_calls >= self.max_attempts:
            metrics.RETRY_DENIED.labels(reason="attempts").inc()
            return False
        last_try = self._worker_calls == self.max_attempts - 1
        if self.model_breakers.blocked(version) or (last_try and self._index + 1 < len(self._candidates)):
            # The version keeps failing, or this is the last try: a fallback
            # model fails independently, another worker of the same version
            # may well not.
            self._index += 1
        if self._index >= len(self._candidates):
            metrics.RETRY_DENIED.labels(reason="no_candidate").inc()
            return False
        if not self.budget.try_withdraw():
            metrics.RETRY_DENIED.labels(reason="budget").inc()
            log.warning("retry budget spent: not retrying %s after %s", version, type(error).__name__)
            return False
        kind = "fallback" if self._candidates[self._index].model_version != version else "worker"
        metrics.RETRIES.labels(model=version, kind=kind).inc()
        self._event(f"headrace.retry.{kind}", attempt, error)
        log.warning(
            "%s on worker %s failed before the first token (%s: %s); retrying (%s)",
            version,
            attempt.worker_id,
            type(error).__name__,
            error,
            kind,
        )
        return True

    def succeeded(
        self, attempt: Attempt, *, ttft_s: float | None, total_s: float, completion_tokens: int, cost_usd: float
    ) -> None:
        self._end_worker(attempt, True)
        self._end_model(attempt, True)
        span = trace.get_current_span()
        span.set_attribute("headrace.route.served_version", attempt.resolution.model_version)
        span.set_attribute("headrace.route.served_reason", attempt.reason)
        span.set_attribute("headrace.route.attempts", attempt.number)
        span.set_attribute("headrace.route.worker_id", attempt.worker_id)
        self._record(attempt, ttft_s=ttft_s, total_s=total_s, completion_tokens=completion_tokens, cost_usd=cost_usd)

    def close(self) -> None:
        """Give back probe slots of an attempt that ended without a verdict
        (the request was cancelled)."""
        if self._open_worker is not None:
            self.worker_breakers.end(self._open_worker, None)
            self._open_worker = None
        if self._open_model is not None:
            self.model_breakers.end(self._open_model, None)
            self._open_model = None

    @property
    def attempts(self) -> tuple[RequestOutcome.Attempt, ...]:
        return tuple(self._attempts)

    def _record(
        self,
        attempt: Attempt,
        *,
        error: HeadraceError | None = None,
        ttft_s: float | None = None,
        total_s: float | None = None,
        completion_tokens: int = 0,
        cost_usd: float = 0.0,
    ) -> None:
        self._attempts.append(
            RequestOutcome.Attempt(
                model_version=attempt.resolution.model_version,
                worker_id=attempt.worker_id,
                error="" if error is None else status_code_for(error).name,
                ttft_s=ttft_s,
                total_s=total_s,
                completion_tokens=completion_tokens,
                cost_usd=cost_usd,
            )
        )

    def _end_worker(self, attempt: Attempt, verdict: bool | None) -> None:
        if attempt.worker_id and self._open_worker == attempt.worker_id:
            self.worker_breakers.end(attempt.worker_id, verdict)
            self._open_worker = None

    def _end_model(self, attempt: Attempt, verdict: bool | None) -> None:
        if self._open_model == attempt.resolution.model_version:
            self.model_breakers.end(attempt.resolution.model_version, verdict)
            self._open_model = None

    def _all_circuits_open(self) -> Unavailable:
        wait = max((self.model_breakers.retry_after_s(v) for v in self._skipped), default=0.0)
        return Unavailable(
            f"{', '.join(self._skipped)}: failing repeatedly (circuit open); not sending more for now",
            retry_after_s=max(1.0, wait),
        )

    @staticmethod
    def _event(name: str, attempt: Attempt, error: HeadraceError) -> None:
        trace.get_current_span().add_event(
            name,
            {
                "headrace.model_version": attempt.resolution.model_version,
                "headrace.worker_id": attempt.worker_id,
                "headrace.error": f"{type(error).__name__}: {error}",
            },
        )
