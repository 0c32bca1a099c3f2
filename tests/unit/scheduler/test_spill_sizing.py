"""A group of pools serving one version is sized cheapest first."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from services.scheduler.spill_sizing import GroupMember, share_demand


def test_the_cheapest_pool_takes_the_groups_demand_up_to_what_it_carries_at_max() -> None:
    shares = share_demand(
        [
            GroupMember("cpu", demand=3.0, carries_at_max=12.0, at_max=False),
            GroupMember("gpu", demand=6.0, carries_at_max=24.0, at_max=False),
        ]
    )
    # The spill the GPU pool serves now is sized on the CPU pool, which can grow.
    assert shares["cpu"].demand == 9.0 and not shares["cpu"].defer_to_cheaper
    assert shares["gpu"].demand == 0.0 and shares["gpu"].defer_to_cheaper


def test_beyond_the_cheap_pools_max_the_rest_goes_to_the_next() -> None:
    shares = share_demand(
        [
            GroupMember("cpu", demand=10.0, carries_at_max=12.0, at_max=True),
            GroupMember("gpu", demand=8.0, carries_at_max=24.0, at_max=False),
        ]
    )
    assert shares["cpu"].demand == 12.0
    # The cheap pool is at its max: the dearer one answers its own SLO.
    assert shares["gpu"].demand == 6.0 and not shares["gpu"].defer_to_cheaper


def test_a_cheap_pool_at_max_but_still_starting_workers_keeps_the_dear_pool_waiting() -> None:
    shares = share_demand(
        [
            # At its max by decision, but workers asked for are still in
            # their cold start: the queue they leave is theirs to take.
            GroupMember("cpu", demand=20.0, carries_at_max=18.0, at_max=True, starting=True),
            GroupMember("gpu", demand=2.0, carries_at_max=12.0, at_max=False),
        ]
    )
    assert shares["gpu"].demand == 4.0
    assert shares["gpu"].defer_to_cheaper


@given(st.lists(st.tuples(st.floats(0, 100), st.floats(0, 50), st.booleans()), min_size=1, max_size=4))
def test_shares_add_up_to_the_groups_demand(members: list[tuple[float, float, bool]]) -> None:
    group = [GroupMember(f"p{i}", d, c, m) for i, (d, c, m) in enumerate(members)]
    shares = share_demand(group)
    assert abs(sum(s.demand for s in shares.values()) - sum(d for d, _, _ in members)) < 1e-6
    assert all(s.demand >= 0 for s in shares.values())
    assert not shares["p0"].defer_to_cheaper
