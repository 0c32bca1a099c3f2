import random
from collections import Counter

import pytest
import redis.asyncio as aioredis

from headrace.runtime.routing_settings import AbPolicySettings
from services.router.routing.arm_stats import ArmStatsStore
from services.router.routing.decision import Choice, RoutingRequest
from services.router.routing.policies.ab_split import AbSplitPolicy

# Never connected: choosing an arm does not touch Redis (only outcomes do).
STORE = ArmStatsStore(aioredis.Redis())


def split(weights: dict[str, float], sticky: str = "user_or_session", seed: int = 0) -> AbSplitPolicy:
    settings = AbPolicySettings.model_validate(
        {"sticky": sticky, "arms": [{"name": n, "target": f"m@{n}", "weight": w} for n, w in weights.items()]}
    )
    return AbSplitPolicy("chat", settings, STORE, rng=random.Random(seed))


def req(user: str = "", session: str = "") -> RoutingRequest:
    return RoutingRequest(request_id="r", tenant="t", model="chat", text="hi", user=user, session_id=session)


def test_the_same_user_gets_the_same_arm_on_every_replica() -> None:
    replicas = [split({"a": 50, "b": 50}, seed=seed) for seed in range(3)]
    for i in range(200):
        arms = {replica.arm_for(req(user=f"user-{i}")).name for replica in replicas for _ in range(3)}
        assert len(arms) == 1


def test_weights_split_the_users_accordingly() -> None:
    policy = split({"a": 80, "b": 15, "c": 5})
    counts = Counter(policy.arm_for(req(user=f"u{i}")).name for i in range(20_000))
    assert counts["a"] / 20_000 == pytest.approx(0.80, abs=0.015)
    assert counts["b"] / 20_000 == pytest.approx(0.15, abs=0.015)
    assert counts["c"] / 20_000 == pytest.approx(0.05, abs=0.01)


def test_a_zero_weight_arm_gets_nobody() -> None:
    policy = split({"a": 1, "off": 0})
    assert {policy.arm_for(req(user=f"u{i}")).name for i in range(2000)} == {"a"}


def test_stickiness_by_session_and_fallback_from_user_to_session() -> None:
    by_session = split({"a": 50, "b": 50}, sticky="session")
    for i in range(100):
        first = by_session.arm_for(req(user=f"x{i}", session=f"s{i}"))
        # Another user in the same session: the session decides.
        assert by_session.arm_for(req(user=f"y{i}", session=f"s{i}")) == first
    either = split({"a": 50, "b": 50})
    for i in range(100):
        assert either.arm_for(req(session=f"s{i}")) == either.arm_for(req(session=f"s{i}"))


def test_without_a_sticky_key_arms_are_drawn_by_weight() -> None:
    policy = split({"a": 50, "b": 50})
    counts = Counter(policy.arm_for(req()).name for _ in range(2000))
    assert 800 < counts["a"] < 1200


async def test_choose_routes_to_the_arm_and_says_which() -> None:
    policy = split({"a": 50, "b": 50})
    choice = await policy.choose(req(user="alice"), Choice(target="chat-default", reasons=("alias:chat",)))
    arm = policy.arm_for(req(user="alice")).name
    assert choice.target == f"m@{arm}"
    assert choice.reasons == ("alias:chat", f"ab:chat/{arm}")
    assert len(choice.observers) == 1


def test_arms_are_validated() -> None:
    with pytest.raises(ValueError, match="unique"):
        AbPolicySettings.model_validate({"arms": [{"name": "a", "target": "m", "weight": 1}] * 2})
    with pytest.raises(ValueError, match="more than 0"):
        AbPolicySettings.model_validate({"arms": [{"name": "a", "target": "m", "weight": 0}]})
