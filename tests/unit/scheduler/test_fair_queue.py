"""The admission queue's promises, as properties over random operation
sequences: never over its bound, strict priority order, weighted shares
within a class, no starvation, fair push-out when full."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.scheduler.fair_queue import FairQueue


@dataclass(frozen=True)
class Item:
    id: int
    cls: int
    tenant: str


TENANTS = ["a", "b", "c", "d"]

# One operation: push (class, tenant), take the head, or remove a queued item.
operations = st.lists(
    st.one_of(
        st.tuples(st.just("push"), st.integers(0, 2), st.sampled_from(TENANTS)),
        st.tuples(st.just("take"), st.just(0), st.just("")),
        st.tuples(st.just("remove"), st.integers(0, 1000), st.just("")),
    ),
    max_size=200,
)
weights = st.fixed_dictionaries({t: st.sampled_from([0.5, 1.0, 2.0, 3.0]) for t in TENANTS})


def make_queue(limit: int, tenant_weights: dict[str, float]) -> FairQueue[Item]:
    return FairQueue(limit=limit, weight_of=lambda t: tenant_weights.get(t, 1.0))


@settings(max_examples=200, deadline=None)
@given(limit=st.integers(0, 12), ops=operations, tenant_weights=weights)
def test_never_over_its_bound_and_always_serves_the_most_important_class_first(
    limit: int, ops: list[tuple[str, int, str]], tenant_weights: dict[str, float]
) -> None:
    queue = make_queue(limit, tenant_weights)
    ids = itertools.count()
    queued: set[Item] = set()
    for op, number, tenant in ops:
        if op == "push":
            item = Item(next(ids), number, tenant)
            admission = queue.push(item, cls=number, tenant=tenant)
            if admission.admitted:
                queued.add(item)
            if admission.evicted is not None:
                assert admission.evicted in queued
                # Only ever for something at least as important.
                assert admission.evicted.cls >= item.cls
                queued.discard(admission.evicted)
        elif op == "take" and queued:
            head = queue.ordered()[0]
            assert head.cls == min(i.cls for i in queued)
            queue.take(head)
            queued.discard(head)
        elif op == "remove" and queued:
            victim = sorted(queued, key=lambda i: i.id)[number % len(queued)]
            assert queue.remove(victim)
            queued.discard(victim)
        assert len(queue) <= limit
        assert len(queue) == len(queued)
        assert set(queue.ordered()) == queued
        assert sum(queue.depth(c) for c in range(3)) == len(queued)


@settings(max_examples=150, deadline=None)
@given(
    tenant_weights=st.dictionaries(st.sampled_from(TENANTS), st.sampled_from([0.5, 1.0, 2.0, 4.0]), min_size=2),
    takes=st.integers(10, 300),
)
def test_backlogged_tenants_share_by_weight(tenant_weights: dict[str, float], takes: int) -> None:
    """Every tenant always has work queued; after any number of services,
    served/weight differs between tenants by at most one item's 1/weight."""
    queue = make_queue(10_000, tenant_weights)
    ids = itertools.count()
    for tenant in tenant_weights:
        for _ in range(3):
            queue.push(Item(next(ids), 1, tenant), cls=1, tenant=tenant)
    served: Counter[str] = Counter()
    for _ in range(takes):
        head = queue.ordered()[0]
        queue.take(head)
        served[head.tenant] += 1
        queue.push(Item(next(ids), 1, head.tenant), cls=1, tenant=head.tenant)
        normalized = [served[t] / w for t, w in tenant_weights.items()]
        assert max(normalized) - min(normalized) <= 1 / min(tenant_weights.values()) + 1e-9


@settings(max_examples=150, deadline=None)
@given(
    tenant_weights=st.dictionaries(st.sampled_from(TENANTS), st.sampled_from([0.5, 1.0, 2.0, 4.0]), min_size=2),
    costs=st.dictionaries(st.sampled_from(TENANTS), st.integers(1, 500)),
)
def test_no_tenant_starves_whatever_the_weights_and_costs(
    tenant_weights: dict[str, float], costs: dict[str, int]
) -> None:
    """With every tenant backlogged, each is served within a bounded number
    of steps: its cost/weight against everyone else's."""
    queue = make_queue(10_000, tenant_weights)
    ids = itertools.count()
    cost = {t: float(costs.get(t, 1)) for t in tenant_weights}
    for tenant in tenant_weights:
        queue.push(Item(next(ids), 1, tenant), cls=1, tenant=tenant, cost=cost[tenant])
    # Between two services of tenant t, another tenant u is served at most
    # ceil((cost_t/w_t) / (cost_u/w_u)) + 1 times.
    bound = {
        t: sum(
            math.ceil((cost[t] / tenant_weights[t]) / (cost[u] / tenant_weights[u])) + 1
            for u in tenant_weights
            if u != t
        )
        + 1
        for t in tenant_weights
    }
    since_served = Counter[str]()
    for _ in range(400):
        head = queue.ordered()[0]
        queue.take(head)
        queue.push(Item(next(ids), 1, head.tenant), cls=1, tenant=head.tenant, cost=cost[head.tenant])
        for tenant in tenant_weights:
            since_served[tenant] = 0 if tenant == head.tenant else since_served[tenant] + 1
            assert since_served[tenant] <= bound[tenant], (tenant, dict(since_served), bound)


@pytest.mark.parametrize("known_before", [False, True])
def test_a_tenant_back_from_idling_gets_no_burst(known_before: bool) -> None:
    queue = make_queue(100, {})
    ids = itertools.count()
    for _ in range(50):
        queue.push(Item(next(ids), 1, "busy"), cls=1, tenant="busy")
    if known_before:
        # "late" is served once early on, then idles while busy is served.
        queue.push(Item(next(ids), 1, "late"), cls=1, tenant="late")
    for _ in range(40):
        queue.take(queue.ordered()[0])
    # "late" (re)joins after busy has been served ~40 times: they alternate
    # now, late does not get a long run to catch up for its idle time.
    for _ in range(10):
        queue.push(Item(next(ids), 1, "late"), cls=1, tenant="late")
    first_six = []
    for _ in range(6):
        head = queue.ordered()[0]
        first_six.append(head.tenant)
        queue.take(head)
    assert first_six.count("late") == 3 and first_six.count("busy") == 3


@settings(max_examples=200, deadline=None)
@given(limit=st.integers(1, 10), pushes=st.lists(st.sampled_from(TENANTS), max_size=60), tenant_weights=weights)
def test_when_full_a_lighter_tenant_pushes_out_the_heaviest_one(
    limit: int, pushes: list[str], tenant_weights: dict[str, float]
) -> None:
    """A refused tenant already holds at least as much of the queue (per
    weight) as anyone; a tenant below that is never refused."""
    queue = make_queue(limit, tenant_weights)
    ids = itertools.count()
    held: Counter[str] = Counter()
    for tenant in pushes:
        before = dict(held)
        admission = queue.push(Item(next(ids), 1, tenant), cls=1, tenant=tenant)
        if admission.admitted:
            held[tenant] += 1
            if admission.evicted is not None:
                held[admission.evicted.tenant] -= 1
                victim = admission.evicted.tenant
                assert (before.get(tenant, 0) + 1) / tenant_weights[tenant] < before[victim] / tenant_weights[victim]
        else:
            own = (before.get(tenant, 0) + 1) / tenant_weights[tenant]
            assert all(own >= count / tenant_weights[t] for t, count in before.items() if count)
        assert len(queue) <= limit


def test_online_work_pushes_batch_out_of_a_full_queue_but_not_the_reverse() -> None:
    queue = make_queue(2, {})
    batch_1, batch_2 = Item(1, 2, "a"), Item(2, 2, "a")
    assert queue.push(batch_1, cls=2, tenant="a").admitted
    assert queue.push(batch_2, cls=2, tenant="a").admitted
    interactive = Item(3, 0, "b")
    admission = queue.push(interactive, cls=0, tenant="b")
    assert admission.admitted and admission.evicted == batch_2
    standard = Item(4, 1, "c")
    assert queue.push(standard, cls=1, tenant="c").evicted == batch_1
    assert not queue.push(Item(5, 2, "a"), cls=2, tenant="a").admitted
    assert queue.ordered() == [interactive, standard]


def test_idle_tenants_are_forgotten() -> None:
    queue = make_queue(100, {})
    for i, tenant in enumerate(f"t{n}" for n in range(50)):
        item = Item(i, 1, tenant)
        queue.push(item, cls=1, tenant=tenant)
        queue.take(item)
    queue.prune()
    assert queue.tenants_known() == 0


def test_bad_input_is_refused() -> None:
    queue = make_queue(2, {})
    item = Item(1, 0, "a")
    queue.push(item, cls=0, tenant="a")
    with pytest.raises(ValueError, match="already queued"):
        queue.push(item, cls=0, tenant="a")
    with pytest.raises(ValueError, match="out of range"):
        queue.push(Item(2, 5, "a"), cls=5, tenant="a")
    with pytest.raises(ValueError, match="limit"):
        make_queue(-1, {})
