"""One request's attempts: other workers, fallbacks, budget, breakers."""

import random
import time

import pytest

from headrace.models.registry import Resolution
from headrace.runtime.errors import (
    Cancelled,
    DeadlineExceeded,
    Internal,
    InvalidArgument,
    NoWorkerAvailable,
    Unavailable,
)
from headrace.runtime.routing_settings import CircuitBreakerSettings, RetrySettings
from services.router.routing.attempts import AttemptPlan
from services.router.routing.circuit_breaker import CircuitBreakers
from services.router.routing.decision import RouteDecision, RoutingRequest
from services.router.routing.retry_budget import Backoff, RetryBudget


def resolution(version: str) -> Resolution:
    return Resolution(model_version=version, pool="p", engine="synthetic", price_per_hour=0.0, reason="default")


class Harness:
    def __init__(self, *, fallbacks: tuple[str, ...] = (), max_attempts: int = 3, budget: float = 10.0) -> None:
        breaker = CircuitBreakerSettings(failure_threshold=2, open_s=30.0)
        self.workers = CircuitBreakers("worker", breaker)
        self.models = CircuitBreakers("model", breaker)
        retry = RetrySettings(budget_ratio=0.0, budget_min_per_s=0.0, budget_capacity=max(1.0, budget))
        self.budget = RetryBudget(retry)
        if budget < 1:
            while self.budget.try_withdraw():
                pass
        self.sleeps: list[float] = []
        self.decision = RouteDecision(
            request=RoutingRequest(request_id="r", tenant="t", model="m", text="hi"),
            primary=resolution("m@1"),
            reasons=("default",),
            fallbacks=tuple(resolution(f) for f in fallbacks),
        )
        self.max_attempts = max_attempts

    def plan(self, clock: list[float] | None = None) -> AttemptPlan:
        """`clock`: a settable time (clock[0]) for the plan's attempts."""

        async def sleep(seconds: float) -> None:
            self.sleeps.append(seconds)

        return AttemptPlan(
            decision=self.decision,
            worker_breakers=self.workers,
            model_breakers=self.models,
            budget=self.budget,
            backoff=Backoff(RetrySettings(backoff_base_ms=10, backoff_max_ms=100), rng=random.Random(3)),
            max_attempts=self.max_attempts,
            sleep=sleep,
            clock=(lambda: clock[0]) if clock is not None else time.monotonic,
        )


async def test_a_worker_failure_is_retried_elsewhere_after_a_backoff() -> None:
    h = Harness()
    plan = h.plan()
    first = await plan.next()
    plan.placed(first, "w0")
    assert plan.worker_failed(first, Unavailable("down"), after_first_token=False)
    second = await plan.next()
    assert second.resolution.model_version == "m@1" and second.exclude_workers == ("w0",)
    assert second.number == 2 and len(h.sleeps) == 1 and 0 <= h.sleeps[0] <= 0.01
    plan.placed(second, "w1")
    plan.succeeded(second, ttft_s=0.01, total_s=0.02, completion_tokens=3, cost_usd=0.0)
    assert [(a.worker_id, a.error) for a in plan.attempts] == [("w0", "UNAVAILABLE"), ("w1", "")]


async def test_no_retry_after_the_first_token_nor_for_client_errors() -> None:
    h = Harness()
    plan = h.plan()
    attempt = await plan.next()
    plan.placed(attempt, "w0")
    assert not plan.worker_failed(attempt, Internal("boom"), after_first_token=True)
    plan = h.plan()
    attempt = await plan.next()
    plan.placed(attempt, "w0")
    assert not plan.worker_failed(attempt, InvalidArgument("bad"), after_first_token=False)


async def test_attempts_are_bounded() -> None:
    h = Harness(max_attempts=2)
    plan = h.plan()
    for worker, expect_retry in (("w0", True), ("w1", False)):
        attempt = await plan.next()
        plan.placed(attempt, worker)
        assert plan.worker_failed(attempt, Unavailable("down"), after_first_token=False) is expect_retry


async def test_a_spent_budget_stops_retries() -> None:
    h = Harness(budget=0.0)
    plan = h.plan()
    attempt = await plan.next()
    plan.placed(attempt, "w0")
    assert not plan.worker_failed(attempt, Unavailable("down"), after_first_token=False)


async def test_no_worker_for_the_version_moves_to_the_fallback_without_budget() -> None:
    h = Harness(fallbacks=("f@1",), budget=0.0)
    plan = h.plan()
    attempt = await plan.next()
    assert plan.placement_failed(attempt, NoWorkerAvailable("none"))
    fallback = await plan.next()
    assert fallback.resolution.model_version == "f@1"
    assert fallback.reason == "default,fallback:m@1"
    assert h.sleeps == [], "no worker was tried: nothing to back off from"
    assert not plan.placement_failed(fallback, NoWorkerAvailable("none")), "nothing left after the last fallback"


async def test_the_last_try_goes_to_the_fallback_model() -> None:
    h = Harness(fallbacks=("f@1",), max_attempts=2)
    plan = h.plan()
    attempt = await plan.next()
    plan.placed(attempt, "w0")
    assert plan.worker_failed(attempt, Unavailable("down"), after_first_token=False)
    assert (await plan.next()).resolution.model_version == "f@1"


async def test_an_open_model_circuit_skips_to_the_fallback_or_fails_fast() -> None:
    h = Harness(fallbacks=("f@1",))
    for _ in range(2):
        h.models.begin("m@1")
        h.models.end("m@1", False)
    plan = h.plan()
    attempt = await plan.next()
    assert attempt.resolution.model_version == "f@1"
    assert plan.attempts[0].model_version == "m@1" and plan.attempts[0].error == "UNAVAILABLE"
    alone = Harness()
    for _ in range(2):
        alone.models.begin("m@1")
        alone.models.end("m@1", False)
    with pytest.raises(Unavailable, match="circuit open") as info:
        await alone.plan().next()
    assert info.value.retry_after_s is not None and info.value.retry_after_s >= 29


async def test_failing_workers_open_their_circuit_and_are_excluded_from_placement() -> None:
    h = Harness()
    for _ in range(2):
        plan = h.plan()
        attempt = await plan.next()
        plan.placed(attempt, "sick")
        assert plan.worker_failed(attempt, Unavailable("down"), after_first_token=False)
        retry = await plan.next()
        plan.placed(retry, "healthy")
        plan.succeeded(retry, ttft_s=0.01, total_s=0.02, completion_tokens=1, cost_usd=0.0)
    # The model keeps answering (its circuit stays closed); the sick worker is left out.
    attempt = await h.plan().next()
    assert attempt.resolution.model_version == "m@1"
    assert attempt.exclude_workers == ("sick",)


async def test_cancelled_attempts_count_for_nothing_and_give_back_probe_slots() -> None:
    h = Harness()
    plan = h.plan()
    attempt = await plan.next()
    plan.placed(attempt, "w0")
    assert not plan.worker_failed(attempt, Cancelled("gone"), after_first_token=False)
    plan = h.plan()
    attempt = await plan.next()
    plan.placed(attempt, "w0")
    plan.close()
    assert not h.workers.blocked("w0") and not h.models.blocked("m@1")


@pytest.mark.parametrize(("ran_s", "opens"), [(0.2, False), (9.9, False), (10.0, True), (600.0, True)])
async def test_a_deadline_counts_against_the_worker_only_after_the_attempt_had_time(ran_s: float, opens: bool) -> None:
    """A client's short deadline running out says nothing of the worker (it
    must not open circuits for everyone else); a worker that hangs past
    deadline_counts_after_s (10 s by default) does trip them."""
    h = Harness()
    now = [100.0]
    for _ in range(2):  # the harness's failure threshold
        plan = h.plan(clock=now)
        attempt = await plan.next()
        plan.placed(attempt, "w0")
        now[0] += ran_s
        assert not plan.worker_failed(attempt, DeadlineExceeded("timeout"), after_first_token=False)
    assert h.workers.blocked("w0") is opens
    assert h.models.blocked("m@1") is opens
