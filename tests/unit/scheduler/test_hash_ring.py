from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from services.scheduler.hash_ring import HashRing, bounded_choice, stable_hash64
from tests.unit.scheduler.workers import worker


def test_walk_visits_every_node_once() -> None:
    ring = HashRing(["a", "b", "c"])
    for key in range(0, 2**64, 2**60):
        assert sorted(ring.walk(key)) == ["a", "b", "c"]
    assert list(HashRing([]).walk(1)) == []


def test_keys_spread_over_the_nodes_and_removing_one_moves_only_its_keys() -> None:
    keys = [stable_hash64(f"key-{i}") for i in range(3000)]
    four = HashRing(["a", "b", "c", "d"])
    home = {key: next(four.walk(key)) for key in keys}
    counts = Counter(home.values())
    assert min(counts.values()) > 3000 / 4 * 0.6
    three = HashRing(["a", "b", "c"])
    for key in keys:
        if home[key] != "d":
            assert next(three.walk(key)) == home[key]


def test_a_hot_key_spills_to_the_next_worker_at_the_load_bound() -> None:
    ring = HashRing(["a", "b"])
    key = stable_hash64("hot")
    first = next(ring.walk(key))
    other = "b" if first == "a" else "a"
    balanced = [worker(first, leases=2), worker(other, leases=2)]
    assert bounded_choice(ring, key, balanced, 1.25, 0)[0].worker_id == first
    hot = [worker(first, leases=6), worker(other, leases=2)]
    chosen, home = bounded_choice(ring, key, hot, 1.25, 0)
    assert chosen.worker_id == other and not home
    # With slack, ordinary fluctuation at low load keeps the key home...
    assert bounded_choice(ring, key, [worker(first, leases=4), worker(other, leases=2)], 1.25, 2)[1]
    # ...but not a real pile-up.
    assert not bounded_choice(ring, key, [worker(first, leases=12), worker(other, leases=2)], 1.25, 2)[1]


# No per-example deadline: the machine is shared, and this is about results, not speed.
@settings(deadline=None)
@given(
    loads=st.lists(st.integers(0, 50), min_size=1, max_size=8),
    key=st.integers(0, 2**64 - 1),
    slack=st.integers(0, 3),
)
def test_the_choice_always_respects_the_bound(loads: list[int], key: int, slack: int) -> None:
    workers = [worker(f"w{i}", leases=load) for i, load in enumerate(loads)]
    ring = HashRing(w.worker_id for w in workers)
    chosen, _home = bounded_choice(ring, key, workers, 1.0, slack)
    total = sum(loads) + 1
    assert chosen.outstanding + 1 <= -(-total // len(loads)) + slack
