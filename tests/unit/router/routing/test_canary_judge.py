import pytest

from headrace.runtime.routing_settings import CanarySettings, CanarySloSettings
from services.router.routing.arm_stats import ArmSummary, bucket_of
from services.router.routing.canary import judge

SETTINGS = CanarySettings(version="2", min_requests=10, min_baseline_requests=20, slo=CanarySloSettings())


def arm(requests: int, errors: int = 0, ttft_ms: float = 50.0, cost: float = 0.001) -> ArmSummary:
    ok = requests - errors
    return ArmSummary(
        requests=requests,
        errors=errors,
        ok=ok,
        completion_tokens=ok * 10,
        cost_usd=cost * ok,
        total_ms_sum=ok * ttft_ms * 2,
        ttft_buckets={bucket_of(ttft_ms): ok} if ok else {},
    )


def test_no_verdict_until_both_arms_saw_enough() -> None:
    assert judge(arm(9), arm(100), SETTINGS) is None
    assert judge(arm(10), arm(19), SETTINGS) is None
    assert judge(arm(10), arm(20), SETTINGS) is not None


def test_a_healthy_canary_passes_and_says_how_it_compared() -> None:
    verdict = judge(arm(10, ttft_ms=55.0), arm(50), SETTINGS)
    assert verdict is not None and verdict.passed
    assert "within SLO" in verdict.reason and "10 canary / 50 stable" in verdict.reason


def test_a_slow_canary_breaches_ttft_p95() -> None:
    verdict = judge(arm(10, ttft_ms=400.0), arm(50, ttft_ms=50.0), SETTINGS)
    assert verdict is not None and not verdict.passed
    assert "TTFT p95" in verdict.reason and "1.5 x stable" in verdict.reason


def test_a_failing_canary_breaches_the_error_rate() -> None:
    verdict = judge(arm(10, errors=3), arm(50, errors=1), SETTINGS)
    assert verdict is not None and not verdict.passed
    assert "error rate 30.0% > stable 2.0% + 2.0%" in verdict.reason


def test_a_canary_failing_everything_breaches_without_any_ttft() -> None:
    verdict = judge(arm(10, errors=10), arm(50), SETTINGS)
    assert verdict is not None and not verdict.passed and "error rate 100.0%" in verdict.reason


def test_a_costly_canary_breaches_cost_per_request() -> None:
    verdict = judge(arm(10, cost=0.002), arm(50, cost=0.001), SETTINGS)
    assert verdict is not None and not verdict.passed and "cost per request" in verdict.reason


def test_errors_within_the_margin_of_the_stable_rate_pass() -> None:
    verdict = judge(arm(100, errors=11), arm(100, errors=10), SETTINGS)
    assert verdict is not None and verdict.passed


def test_ttft_quantiles_read_back_within_a_bucket() -> None:
    summary = ArmSummary()
    for ms in range(1, 1001):
        bucket = bucket_of(float(ms))
        summary.ttft_buckets[bucket] = summary.ttft_buckets.get(bucket, 0) + 1
    assert summary.ttft_quantile_ms(0.95) == pytest.approx(950.0, rel=0.1)
    assert summary.ttft_quantile_ms(0.5) == pytest.approx(500.0, rel=0.1)
    assert ArmSummary().ttft_quantile_ms(0.95) == 0.0
