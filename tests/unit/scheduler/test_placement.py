"""Every placement policy keeps the one protocol (a parametrized test over
all of them), then what each promises on its own."""

from __future__ import annotations

import inspect
import random
import typing
from collections import Counter

import pytest

from headrace.request_rules.prefix_hashing import prefix_hashes
from headrace.runtime.config import PlacementPolicyName, PoolSchedulingSettings
from services.scheduler.placement import (
    POLICIES,
    PlacementPolicy,
    PlacementRequest,
    SessionAffinityPolicy,
    build_policy,
)
from services.scheduler.worker_roster import WorkerState
from tests.unit.scheduler.workers import worker


def request(
    request_id: str = "r", *, session: str = "", prefix: str = "", prompt_tokens: int = 10, max_tokens: int = 20
) -> PlacementRequest:
    return PlacementRequest(
        request_id=request_id,
        model_version="m@1",
        tenant="t",
        priority=1,
        session_id=session,
        prefix_hashes=tuple(prefix_hashes(prefix, block_chars=16)),
        prompt_tokens=prompt_tokens,
        max_tokens=max_tokens,
    )


def policy_named(name: str, **overrides: object) -> PlacementPolicy:
    settings = PoolSchedulingSettings.model_validate({"policy": name, **overrides})
    return build_policy(settings, random.Random(7))


def test_the_config_names_exactly_the_policies_there_are() -> None:
    assert set(typing.get_args(PlacementPolicyName)) == set(POLICIES)


@pytest.mark.parametrize("name", sorted(POLICIES))
class TestEveryPolicy:
    def test_one_async_signature(self, name: str) -> None:
        policy = policy_named(name)
        assert policy.name == name
        assert inspect.iscoroutinefunction(policy.choose)
        assert list(inspect.signature(policy.choose).parameters) == ["request", "candidates"]

    async def test_chooses_among_the_candidates_only(self, name: str) -> None:
        policy = policy_named(name)
        pool = [worker(f"w{i}", leases=i % 3, leased_tokens=(i % 3) * 30) for i in range(5)]
        for i in range(40):
            candidates = pool[i % 3 :]
            snapshot = list(candidates)
            chosen = await policy.choose(
                request(str(i), session=f"s{i % 4}", prefix=f"system prompt {i % 2} " * 10), candidates
            )
            assert chosen is not None and any(chosen is c for c in candidates)
            assert candidates == snapshot  # never reorders or edits the caller's list

    async def test_a_single_candidate_is_the_choice(self, name: str) -> None:
        only = worker("only", leases=5)
        assert await policy_named(name).choose(request(session="s", prefix="p" * 64), [only]) is only

    async def test_requests_without_session_or_prefix_are_placed(self, name: str) -> None:
        pool = [worker("a"), worker("b", leases=2)]
        assert await policy_named(name).choose(request(), pool) in pool

    async def test_never_piles_everything_on_one_worker_when_others_are_idle(self, name: str) -> None:
        """Placing 20 requests, counting each as a lease, loads both workers:
        load-blind round robin alternates; the rest follow load (affinity
        within its bound, 1.25 x the average + 2)."""
        policy = policy_named(name)
        pool = [worker("a"), worker("b")]
        for i in range(20):
            chosen = await policy.choose(request(str(i), session="one-session", prefix="same " * 20), pool)
            assert chosen is not None
            chosen.leases += 1
            chosen.leased_tokens += 30
        assert min(w.leases for w in pool) >= 5


async def test_least_load_and_least_tokens_differ_on_long_requests() -> None:
    few_long = worker("few-long", leases=1, leased_tokens=4000)
    many_short = worker("many-short", leases=3, leased_tokens=300)
    assert await policy_named("least_load").choose(request(), [few_long, many_short]) is few_long
    assert await policy_named("least_outstanding_tokens").choose(request(), [few_long, many_short]) is many_short


async def test_power_of_two_never_picks_the_busiest_of_three() -> None:
    policy = policy_named("power_of_two")
    pool = [worker("idle"), worker("some", leases=2, leased_tokens=100), worker("busy", leases=6, leased_tokens=900)]
    chosen = Counter([(await policy.choose(request(str(i)), pool)).worker_id for i in range(200)])  # type: ignore[union-attr]
    assert chosen["busy"] == 0 and chosen["idle"] > chosen["some"] > 0


async def test_round_robin_takes_turns() -> None:
    policy = policy_named("round_robin")
    pool = [worker("b", leases=9), worker("a")]
    chosen = [(await policy.choose(request(str(i)), pool)).worker_id for i in range(6)]  # type: ignore[union-attr]
    assert chosen == ["a", "b", "a", "b", "a", "b"]


async def test_prefix_affinity_keeps_a_shared_prefix_on_one_worker_and_spreads_others() -> None:
    policy = policy_named("prefix_affinity", prefix_key_blocks=2)
    pool = [worker(f"w{i}", leases=2) for i in range(4)]
    system_prompts = [f"system prompt number {n}: you answer questions about rivers. " for n in range(40)]
    homes: dict[int, set[str]] = {}
    for n, system in enumerate(system_prompts):
        for question in ("where?", "why?", "how long is the longest one in the world?"):
            chosen = await policy.choose(request(prefix=system + question), pool)
            assert chosen is not None
            homes.setdefault(n, set()).add(chosen.worker_id)
    # The same system prompt whatever the question: one worker each...
    assert all(len(workers) == 1 for workers in homes.values())
    # ...and different system prompts over all the workers.
    assert len(set().union(*homes.values())) == 4


async def test_prefix_affinity_spills_a_hot_prefix_past_the_load_bound() -> None:
    policy = policy_named("prefix_affinity", affinity_load_factor=1.5, affinity_load_slack=0)
    pool = [worker("a"), worker("b"), worker("c")]
    for i in range(30):
        chosen = await policy.choose(request(str(i), prefix="the one hot system prompt " * 20), pool)
        assert chosen is not None
        chosen.leases += 1
    # Without the bound all 30 would sit on one worker; with it, none holds
    # more than 1.5x the average (10) rounded up.
    assert max(w.leases for w in pool) <= 15
    assert max(w.leases for w in pool) > 10  # the home worker still takes the most


async def test_session_affinity_sticks_while_healthy_and_not_overloaded() -> None:
    policy = policy_named("session_affinity")
    a, b, c = worker("a"), worker("b"), worker("c")
    first = await policy.choose(request(session="chat-1"), [a, b, c])
    assert first is not None
    for _ in range(5):
        assert await policy.choose(request(session="chat-1"), [a, b, c]) is first
    # Its worker is gone (stale, unhealthy, draining or full): the session
    # moves, and then sticks to its new worker even when the old returns.
    others = [w for w in (a, b, c) if w is not first]
    moved = await policy.choose(request(session="chat-1"), others)
    assert moved is not None and moved is not first
    assert await policy.choose(request(session="chat-1"), [a, b, c]) is moved
    # Overloaded: far above the others' load, it moves on too.
    moved.leases = 20
    assert await policy.choose(request(session="chat-1"), [a, b, c]) is not moved


async def test_sessions_spread_and_the_table_is_bounded() -> None:
    policy = SessionAffinityPolicy(load_factor=1.25, load_slack=2, max_sessions=50)
    pool: list[WorkerState] = [worker("a"), worker("b"), worker("c")]
    chosen: Counter[str] = Counter()
    for i in range(200):
        placed = await policy.choose(request(session=f"chat-{i}"), pool)
        assert placed is not None
        chosen[placed.worker_id] += 1
    assert len(chosen) == 3
    assert len(policy) == 50
