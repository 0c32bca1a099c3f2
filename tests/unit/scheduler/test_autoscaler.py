"""The worker-count decision: bounds, up fast and down slow, no flapping,
cold starts and scale to zero."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from headrace.runtime.config import AutoscaleSettings
from services.scheduler.autoscaler import Autoscaler, Decision, PoolAutoscaling, PoolSignals, SampleWindow

SLOTS = 4.0


def scaler(**overrides: object) -> Autoscaler:
    base: dict[str, object] = {
        "enabled": True,
        "min_workers": 1,
        "max_workers": 8,
        "scale_up_cooldown_s": 10.0,
        "scale_down_cooldown_s": 60.0,
        "scale_down_window_s": 120.0,
        "cold_start_s": 30.0,
    }
    base.update(overrides)
    return Autoscaler("pool", AutoscaleSettings.model_validate(base), initial=1)


def reading(
    now: float,
    *,
    workers: int,
    queued: int = 0,
    leased: int = 0,
    ttft_p95_s: float | None = None,
    queue_wait_p95_s: float | None = None,
) -> PoolSignals:
    return PoolSignals(
        now=now,
        workers=workers,
        queued=queued,
        leased=leased,
        slots_per_worker=SLOTS,
        ttft_p95_s=ttft_p95_s,
        queue_wait_p95_s=queue_wait_p95_s,
    )


readings = st.lists(
    st.tuples(
        st.integers(0, 12),  # workers reporting
        st.integers(0, 400),  # queued
        st.integers(0, 64),  # leased
        st.none() | st.floats(0, 30),  # TTFT p95
        st.none() | st.floats(0, 30),  # queue wait p95
        st.floats(0.1, 90),  # seconds since the last reading
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(readings, st.integers(0, 3), st.integers(1, 10), st.booleans())
def test_the_decision_never_leaves_min_and_max(
    steps: list[tuple[int, int, int, float | None, float | None, float]], low: int, span: int, to_zero: bool
) -> None:
    if low == 0 and not to_zero:
        low = 1
    s = scaler(min_workers=low, max_workers=low + span, scale_to_zero=to_zero, idle_before_zero_s=30.0)
    now = 0.0
    for workers, queued, leased, ttft, wait in ((w, q, le, t, qw) for w, q, le, t, qw, _ in steps):
        decision = s.decide(
            reading(now, workers=workers, queued=queued, leased=leased, ttft_p95_s=ttft, queue_wait_p95_s=wait)
        )
        floor = 0 if to_zero else low
        assert floor <= decision.desired <= low + span
        now += 5.0


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 8), st.integers(0, 40), st.integers(0, 40))
def test_a_steady_load_settles_and_then_never_changes(workers: int, queued: int, leased: int) -> None:
    s = scaler()
    now = 0.0
    # Let it settle: the workers it asks for come up.
    for _ in range(40):
        decision = s.decide(reading(now, workers=workers, queued=queued, leased=leased))
        workers = decision.desired
        now += 10.0
    settled = s.changes
    for _ in range(100):
        decision = s.decide(reading(now, workers=workers, queued=queued, leased=leased))
        now += 10.0
    assert s.changes == settled, "the decision moved under an unchanged load"


def test_a_growing_queue_scales_up_and_respects_the_cooldown() -> None:
    s = scaler(max_scale_up_step=2)
    first = s.decide(reading(0.0, workers=1, queued=40, leased=4))
    assert first.changed and first.desired == 3  # one step of 2 at most
    held = s.decide(reading(5.0, workers=1, queued=80, leased=4))
    assert held.desired == 3, "a second scale-up inside the cooldown"
    later = s.decide(reading(11.0, workers=3, queued=120, leased=12))
    assert later.desired == 5


def test_an_slo_breach_with_work_waiting_adds_a_worker_even_at_low_utilisation() -> None:
    s = scaler()
    decision = s.decide(reading(0.0, workers=2, queued=1, leased=1, ttft_p95_s=5.0))
    assert decision.desired == 3
    assert "TTFT p95" in decision.reason


def test_a_slow_cold_start_is_not_answered_with_more_workers() -> None:
    s = scaler(scale_up_cooldown_s=0.0, cold_start_s=60.0)
    assert s.decide(reading(0.0, workers=1, queued=2, leased=4, queue_wait_p95_s=9.0)).desired == 2
    # The new worker is still starting: the breach goes on, no third worker.
    for t in (5.0, 20.0, 40.0):
        assert s.decide(reading(t, workers=1, queued=2, leased=4, queue_wait_p95_s=9.0)).desired == 2
    # It came up and users still wait: now one more.
    assert s.decide(reading(45.0, workers=2, queued=2, leased=4, queue_wait_p95_s=9.0)).desired == 3


def test_scale_down_waits_for_the_whole_window_and_the_cooldown() -> None:
    s = scaler(scale_down_cooldown_s=30.0, scale_down_window_s=120.0)
    assert s.decide(reading(0.0, workers=1, queued=60, leased=4)).desired == 5
    t = 1.0
    while t < 120.0:
        assert s.decide(reading(t, workers=5, leased=2)).desired == 5, f"scaled down at {t}s"
        t += 10.0
    # The burst left the window: down to what the load needs.
    assert s.decide(reading(t + 10.0, workers=5, leased=2)).desired == 1


def test_scale_to_zero_after_idle_and_back_on_the_first_request() -> None:
    s = scaler(min_workers=0, scale_to_zero=True, idle_before_zero_s=100.0, scale_down_cooldown_s=0.0)
    now = 0.0
    while now < 100.0:
        assert s.decide(reading(now, workers=1)).desired == 1
        now += 10.0
    zero = s.decide(reading(now, workers=1))
    assert zero.desired == 0 and "scale to zero" in zero.reason
    cold = s.decide(reading(now + 5.0, workers=0, queued=1))
    assert cold.desired == 1 and "cold start" in cold.reason


def test_p95_over_a_sliding_window() -> None:
    window = SampleWindow(window_s=10.0)
    assert window.p95(0.0) is None
    for i in range(100):
        window.add(float(i) / 10.0, float(i))
    assert window.p95(9.9) == 94.0
    # Samples older than the window are gone.
    assert window.p95(100.0) is None


def test_a_pool_with_autoscaling_off_keeps_its_configured_count() -> None:
    off = AutoscaleSettings()
    autoscaling = PoolAutoscaling(lambda pool: off, {"chat": 3})
    decision = autoscaling.evaluate("chat", now=0.0, workers=1, queued=500, leased=16, slots_per_worker=16)
    assert decision.desired == 3
    assert not decision.changed


def test_pool_autoscaling_reads_queue_waits_and_ttfts() -> None:
    on = AutoscaleSettings(enabled=True, max_workers=4, ttft_slo_s=1.0)
    autoscaling = PoolAutoscaling(lambda pool: on, {"chat": 1})
    for t in range(20):
        autoscaling.observe_ttft("chat", float(t), 3.0)
    decision = autoscaling.evaluate("chat", now=20.0, workers=1, queued=1, leased=1, slots_per_worker=16)
    assert decision.desired == 2 and "TTFT" in decision.reason
    assert autoscaling.decision("chat", 1).desired == 2


def test_trend_is_the_least_squares_slope_with_its_error() -> None:
    window = SampleWindow(window_s=10.0)
    assert window.trend(0.0) is None
    for i in range(20):
        window.add(i * 0.5, 2.0 + 0.3 * i * 0.5 + (0.1 if i % 2 else -0.1))
    trend = window.trend(9.5)
    assert trend is not None
    slope, stderr = trend
    assert abs(slope - 0.3) < 0.02
    assert 0 < stderr < 0.05


def lead_time_autoscaling(**overrides: object) -> PoolAutoscaling:
    base: dict[str, object] = {
        "enabled": True,
        "max_workers": 8,
        "window_s": 10.0,
        "cold_start_s": 15.0,
        "scale_up_cooldown_s": 5.0,
        "target_utilisation": 0.75,
    }
    base.update(overrides)
    on = AutoscaleSettings.model_validate(base)
    return PoolAutoscaling(lambda pool: on, {"chat": 1})


def test_a_clear_rise_asks_for_a_worker_before_the_pool_is_full() -> None:
    autoscaling = lead_time_autoscaling()
    # Demand climbs 0.3 sequences a second from 0.7 (a 10x ramp's shape);
    # one worker's 4 slots fill at about 11 s, a worker takes 15 s to come.
    t, first_up = 0.0, None
    while t < 12.0:
        demand = 0.7 + 0.3 * t
        decision = autoscaling.evaluate("chat", now=t, workers=1, queued=0, leased=round(demand), slots_per_worker=4)
        if decision.changed and first_up is None:
            first_up = (t, decision)
        t += 0.5
    assert first_up is not None, "no scale-up while demand climbed toward a full pool"
    when, decision = first_up
    assert when < 8.0 and decision.desired == 2
    assert "demand rising" in decision.reason
    # Still below 3 sequences (3 of 4 slots at the target): the mean alone
    # would not have asked yet.
    assert 0.7 + 0.3 * when < 3.0


def test_a_steady_noisy_load_never_triggers_the_lead_time_rule() -> None:
    import random

    rng = random.Random(7)
    autoscaling = lead_time_autoscaling(scale_down_cooldown_s=20.0, scale_down_window_s=30.0)
    # About 2 requests a second of 0.34 s each on one worker of 4 slots:
    # readings jump between 0 and 3 around a mean of 0.7, for half an hour.
    changes = []
    for step in range(3600):
        busy = sum(1 for _ in range(4) if rng.random() < 0.17)
        decision = autoscaling.evaluate("chat", now=step * 0.5, workers=1, queued=0, leased=busy, slots_per_worker=4)
        if decision.changed:
            changes.append((step * 0.5, decision.desired, decision.reason))
    assert changes == [], f"a flat load moved the decision: {changes[:3]}"


def test_a_rise_right_after_a_scale_down_is_not_answered_by_the_lead_time_rule() -> None:
    settings = AutoscaleSettings(
        enabled=True, max_workers=4, window_s=10.0, cold_start_s=15.0, scale_down_cooldown_s=20.0
    )
    s = Autoscaler("pool", settings, initial=2)
    down = s.decide(PoolSignals(now=0.0, workers=2, queued=0, leased=0, slots_per_worker=SLOTS, mean_demand=0.5))
    assert down.changed and down.desired == 1

    def rising(now: float) -> Decision:
        # The retired worker's work moving over looks like a steep rise.
        return s.decide(
            PoolSignals(
                now=now, workers=1, queued=0, leased=2, slots_per_worker=SLOTS, mean_demand=2.0, demand_rising_per_s=0.5
            )
        )

    for now in (1.0, 5.0, 10.0, 19.0):
        assert rising(now).desired == 1, f"the lead-time rule answered a scale-down at {now}s"
    # After the cooldown the same rise is answered: 2 + 0.5 x 20 s = 12
    # sequences expected, 4 workers at 3 of 4 slots each.
    later = rising(21.0)
    assert later.desired == 4 and "demand rising" in later.reason


def test_a_steep_rise_asks_for_what_the_expected_demand_needs_not_one_at_a_time() -> None:
    settings = AutoscaleSettings(enabled=True, max_workers=8, window_s=10.0, cold_start_s=15.0, target_utilisation=0.75)
    s = Autoscaler("pool", settings, initial=2)
    # 6 sequences on 8 slots, rising 0.35 a second: 13 expected when a
    # worker asked now would serve (15 s cold start + half a window), which
    # at 3 of 4 slots a worker needs 5 workers. One more (3) would leave the
    # next step a cooldown and a cold start behind the ramp.
    decision = s.decide(
        PoolSignals(
            now=0.0, workers=2, queued=0, leased=6, slots_per_worker=SLOTS, mean_demand=6.0, demand_rising_per_s=0.35
        )
    )
    assert decision.changed and decision.desired == 5
    assert "13.0 sequences expected in 20s" in decision.reason


def test_a_rise_that_needs_less_than_one_more_worker_still_asks_for_one() -> None:
    settings = AutoscaleSettings(enabled=True, max_workers=8, window_s=10.0, cold_start_s=15.0)
    s = Autoscaler("pool", settings, initial=1)
    # 4.2 sequences expected on 4 slots: over them, and ceil(4.2 / 3) = 2.
    decision = s.decide(
        PoolSignals(
            now=0.0, workers=1, queued=0, leased=2, slots_per_worker=SLOTS, mean_demand=2.2, demand_rising_per_s=0.1
        )
    )
    assert decision.changed and decision.desired == 2


def test_no_scale_down_while_demand_clearly_rises() -> None:
    settings = AutoscaleSettings(
        enabled=True,
        max_workers=8,
        window_s=10.0,
        cold_start_s=15.0,
        scale_down_cooldown_s=20.0,
        scale_down_window_s=30.0,
    )

    def reading(now: float, rising: float) -> PoolSignals:
        # 5.5 sequences: 2 workers at 3 of 4 slots each would do, by the mean.
        return PoolSignals(
            now=now, workers=4, queued=0, leased=6, slots_per_worker=SLOTS, mean_demand=5.5, demand_rising_per_s=rising
        )

    rising = Autoscaler("pool", settings, initial=4)
    assert all(rising.decide(reading(now, 0.1)).desired == 4 for now in range(0, 120, 5))
    flat = Autoscaler("pool", settings, initial=4)
    assert [flat.decide(reading(now, 0.0)).desired for now in range(0, 120, 5)][-1] == 2


def test_workers_asked_for_count_as_coming_only_within_a_cold_start() -> None:
    # What keeps a dearer pool of the group waiting (spill_sizing.py): a
    # cheap pool whose workers never come must not hold it back for good.
    settings = AutoscaleSettings(enabled=True, max_workers=8, window_s=10.0, cold_start_s=15.0)
    s = Autoscaler("pool", settings, initial=1)
    up = s.decide(
        PoolSignals(
            now=0.0, workers=1, queued=0, leased=3, slots_per_worker=SLOTS, mean_demand=3.0, demand_rising_per_s=0.3
        )
    )
    assert up.desired > 1
    assert s.workers_coming(10.0, workers=1)
    assert not s.workers_coming(10.0, workers=up.desired)
    assert not s.workers_coming(16.0, workers=1)
