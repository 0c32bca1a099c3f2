import pytest
from prometheus_client import REGISTRY

from headrace.runtime.routing_settings import CircuitBreakerSettings
from services.router.routing.circuit_breaker import BreakerState, CircuitBreakers


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def breakers(clock: Clock, *, threshold: int = 3, open_s: float = 5.0, probes: int = 1) -> CircuitBreakers:
    settings = CircuitBreakerSettings(failure_threshold=threshold, open_s=open_s, half_open_probes=probes)
    return CircuitBreakers("worker", settings, clock=clock)


def fail(b: CircuitBreakers, key: str, times: int = 1) -> None:
    for _ in range(times):
        b.begin(key)
        b.end(key, False)


def test_opens_after_threshold_failures_in_a_row_and_blocks() -> None:
    clock = Clock()
    b = breakers(clock)
    fail(b, "w0", 2)
    assert b.state("w0") is BreakerState.CLOSED and not b.blocked("w0")
    fail(b, "w0")
    assert b.state("w0") is BreakerState.OPEN and b.blocked("w0")
    assert b.retry_after_s("w0") == pytest.approx(5.0)
    assert not b.blocked("w1")


def test_a_success_resets_the_run_of_failures() -> None:
    b = breakers(Clock())
    fail(b, "w0", 2)
    b.begin("w0")
    b.end("w0", True)
    fail(b, "w0", 2)
    assert b.state("w0") is BreakerState.CLOSED


def test_half_open_after_open_s_lets_probes_through_up_to_the_limit() -> None:
    clock = Clock()
    b = breakers(clock, probes=2)
    fail(b, "w0", 3)
    clock.now += 4.9
    assert b.blocked("w0")
    clock.now += 0.2
    assert b.state("w0") is BreakerState.HALF_OPEN and not b.blocked("w0")
    b.begin("w0")
    assert not b.blocked("w0")
    b.begin("w0")
    assert b.blocked("w0"), "two probes in flight: no third"
    b.end("w0", None)
    assert not b.blocked("w0"), "a cancelled probe gives its slot back"


def test_probe_success_closes_and_probe_failure_reopens() -> None:
    clock = Clock()
    b = breakers(clock)
    fail(b, "w0", 3)
    clock.now += 5.0
    b.begin("w0")
    b.end("w0", False)
    assert b.state("w0") is BreakerState.OPEN and b.blocked("w0")
    assert b.retry_after_s("w0") == pytest.approx(5.0), "open again for a full open_s"
    clock.now += 5.0
    b.begin("w0")
    b.end("w0", True)
    assert b.state("w0") is BreakerState.CLOSED and not b.blocked("w0")
    fail(b, "w0", 2)
    assert b.state("w0") is BreakerState.CLOSED, "closing forgot the old failures"


def test_a_probe_that_never_reports_back_lapses() -> None:
    clock = Clock()
    b = breakers(clock)
    fail(b, "w0", 3)
    clock.now += 5.0
    b.begin("w0")
    assert b.blocked("w0")
    clock.now += 5.1
    assert not b.blocked("w0")


def test_verdictless_ends_do_not_count() -> None:
    b = breakers(Clock(), threshold=1)
    for _ in range(10):
        b.begin("w0")
        b.end("w0", None)
    assert b.state("w0") is BreakerState.CLOSED


def test_closed_breakers_are_forgotten_beyond_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(CircuitBreakers, "MAX_KEYS", 4)
    b = breakers(Clock(), threshold=2)
    fail(b, "sick", 2)
    for i in range(10):
        fail(b, f"w{i}")
    assert len(b._breakers) <= 5
    assert b.state("sick") is BreakerState.OPEN, "open breakers are kept"


def test_a_forgotten_breaker_takes_its_state_gauge_with_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(CircuitBreakers, "MAX_KEYS", 2)
    clock = Clock()
    b = CircuitBreakers("gauge-test", CircuitBreakerSettings(failure_threshold=1, open_s=5.0), clock=clock)

    def gauge(key: str) -> float | None:
        return REGISTRY.get_sample_value("headrace_router_circuit_state", {"kind": "gauge-test", "key": key})

    fail(b, "gone")
    assert gauge("gone") == BreakerState.OPEN.value
    clock.now += 5.0
    b.begin("gone")
    b.end("gone", True)
    assert gauge("gone") == BreakerState.CLOSED.value
    fail(b, "w1")
    fail(b, "w2")
    assert "gone" not in b._breakers
    assert gauge("gone") is None
    assert gauge("w2") == BreakerState.OPEN.value
