import random

import pytest

from headrace.runtime.routing_settings import RetrySettings
from services.router.routing.retry_budget import Backoff, RetryBudget


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_retries_stay_a_bounded_share_when_everything_fails() -> None:
    clock = Clock()
    settings = RetrySettings(budget_ratio=0.1, budget_min_per_s=2.0, budget_capacity=10.0)
    budget = RetryBudget(settings, clock=clock)
    retries = 0
    requests = 5000
    for _ in range(requests):
        clock.now += 0.001  # 1000 requests/s for 5 s
        budget.deposit()
        if budget.try_withdraw():
            retries += 1
    # At most: the initial bucket + 10% of requests + 2/s over 5 s.
    assert retries <= 10 + 0.1 * requests + 2 * 5 + 1
    assert retries >= 0.1 * requests - 1, "the budget does let its share through"


def test_an_empty_budget_refills_with_time_up_to_its_capacity() -> None:
    clock = Clock()
    budget = RetryBudget(RetrySettings(budget_ratio=0.0, budget_min_per_s=1.0, budget_capacity=3.0), clock=clock)
    while budget.try_withdraw():
        pass
    assert not budget.try_withdraw()
    clock.now += 1.0
    assert budget.try_withdraw()
    assert not budget.try_withdraw()
    clock.now += 1000.0
    assert budget.tokens == pytest.approx(3.0)


def test_reconfiguring_keeps_tokens_within_the_new_capacity() -> None:
    clock = Clock()
    budget = RetryBudget(RetrySettings(budget_capacity=20.0), clock=clock)
    budget.configure(RetrySettings(budget_capacity=2.0))
    assert budget.tokens == pytest.approx(2.0)


@pytest.mark.parametrize("retry", [1, 2, 3, 6, 10])
def test_backoff_is_full_jitter_under_an_exponential_ceiling(retry: int) -> None:
    settings = RetrySettings(backoff_base_ms=20.0, backoff_max_ms=300.0)
    backoff = Backoff(settings, rng=random.Random(7))
    ceiling_s = min(300.0, 20.0 * 2 ** (retry - 1)) / 1000.0
    delays = [backoff.delay_s(retry) for _ in range(500)]
    assert all(0.0 <= d <= ceiling_s for d in delays)
    assert max(delays) > 0.8 * ceiling_s and min(delays) < 0.2 * ceiling_s, "spread over the whole range"
