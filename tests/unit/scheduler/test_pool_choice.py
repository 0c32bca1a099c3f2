"""Choosing among the pools that serve one model version: cheapest per token
while its queue keeps the SLO, spill when it would not, batch to the
cheapest capacity."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.scheduler.pool_choice import PoolOption, choose_pool

CPU = dict(pool="cpu", price_per_hour=0.09, tokens_per_s=50.0, workers=2, wait_slo_s=1.0)
GPU = dict(pool="gpu", price_per_hour=2.5, tokens_per_s=2500.0, workers=1, wait_slo_s=1.0)


def option(base: dict[str, object], wait: float | None) -> PoolOption:
    return PoolOption(expected_wait_s=wait, **base)  # type: ignore[arg-type]


def test_cost_per_token_is_price_over_throughput() -> None:
    # 0.09 USD/h at 50 tok/s = 0.5 USD per million tokens; 2.5 USD/h at 2,500 tok/s = 0.278.
    assert option(CPU, 0).usd_per_million_tokens == pytest.approx(0.5)
    assert option(GPU, 0).usd_per_million_tokens == pytest.approx(0.2778, rel=1e-3)
    assert math.isinf(PoolOption("x", 1.0, None, 1, 0.0, 1.0).usd_per_million_tokens)


def test_the_cheapest_pool_while_its_wait_keeps_the_slo_then_spill() -> None:
    assert choose_pool([option(CPU, 0.0), option(GPU, 0.0)], batch=False).pool == "gpu"
    cheap_cpu = {**CPU, "tokens_per_s": 500.0}  # now 0.05 USD per million tokens
    assert choose_pool([option(cheap_cpu, 0.5), option(GPU, 0.0)], batch=False).reason == "cheapest"
    spilled = choose_pool([option(cheap_cpu, 3.0), option(GPU, 0.2)], batch=False)
    assert (spilled.pool, spilled.reason, spilled.passed_over) == ("gpu", "spill", ("cpu",))
    # Both would break their SLO: the one that answers sooner.
    soonest = choose_pool([option(cheap_cpu, 3.0), option(GPU, 5.0)], batch=False)
    assert (soonest.pool, soonest.reason) == ("cpu", "soonest")


def test_batch_takes_the_cheapest_capacity_whatever_the_wait() -> None:
    cheap_cpu = {**CPU, "tokens_per_s": 500.0}
    choice = choose_pool([option(cheap_cpu, 60.0), option(GPU, 0.0)], batch=True)
    assert (choice.pool, choice.reason) == ("cpu", "batch-cheapest")


def test_a_pool_without_workers_is_not_chosen_while_another_has_them() -> None:
    empty_cheap = {**CPU, "tokens_per_s": 500.0, "workers": 0}
    assert choose_pool([option(empty_cheap, None), option(GPU, 9.0)], batch=False).pool == "gpu"
    assert choose_pool([option(empty_cheap, None), option({**GPU, "workers": 0}, None)], batch=False).pool == "cpu"


options = st.builds(
    PoolOption,
    pool=st.sampled_from(["a", "b", "c", "d"]),
    price_per_hour=st.floats(0, 10),
    tokens_per_s=st.none() | st.floats(1, 5000),
    workers=st.integers(0, 4),
    expected_wait_s=st.none() | st.floats(0, 60),
    wait_slo_s=st.floats(0.1, 5),
)


@given(st.lists(options, min_size=1, max_size=4, unique_by=lambda o: o.pool), st.booleans())
def test_the_choice_is_one_of_the_options_and_never_dearer_than_a_pool_that_keeps_its_slo(
    pools: list[PoolOption], batch: bool
) -> None:
    choice = choose_pool(pools, batch=batch)
    chosen = next(o for o in pools if o.pool == choice.pool)
    if batch or choice.reason not in ("cheapest", "spill"):
        return
    for other in pools:
        if other.workers and other.wait_s <= other.wait_slo_s:
            assert chosen.usd_per_million_tokens <= other.usd_per_million_tokens
