"""Composition: aliases, their policies in order, nesting through other
aliases, pinned versions and fallbacks (canaries: tests/integration)."""

import random
from typing import Any

import pytest
import redis.asyncio as aioredis

from headrace.models.registry import ModelRegistry
from headrace.runtime.config import Settings
from headrace.runtime.errors import NotFound
from services.router.routing.arm_stats import ArmStatsStore
from services.router.routing.decision import RoutingRequest
from services.router.routing.policies.difficulty import TextEncoder
from services.router.routing.routing_table import RoutingTable, build_alias_routes


def no_encoder() -> TextEncoder:
    raise AssertionError("these routes load no embedding model")


def make(**routing: Any) -> RoutingTable:
    settings = Settings(
        pools={
            "small": {"engine": {"kind": "synthetic"}, "price_per_hour": 0.1},
            "big": {"engine": {"kind": "synthetic"}, "price_per_hour": 1.0},
        },
        models={
            "fast": {"default_version": "1", "versions": {"1": {"pool": "small"}}},
            "strong": {
                "default_version": "2",
                "versions": {
                    "1": {"pool": "big", "deprecated": True, "replaced_by": "strong@2"},
                    "2": {"pool": "big", "price_per_hour": 2.0},
                },
            },
        },
        aliases={"chat": "strong", "smart": "strong", "legacy": "strong@1"},
        default_model="strong",
        routing=routing,
    )
    redis = aioredis.Redis()  # never connected without canaries
    table = build_alias_routes(
        settings,
        redis=redis,
        stats=ArmStatsStore(redis),
        encoder=no_encoder,
        rng=random.Random(1),
    )
    return RoutingTable(settings, ModelRegistry(settings), table)


def req(model: str, text: str = "What is the capital of France?", user: str = "") -> RoutingRequest:
    return RoutingRequest(request_id="r", tenant="t", model=model, text=text, user=user)


async def test_without_policies_reasons_are_the_plain_ones() -> None:
    registry = make()
    assert (await registry.decide(req("strong"), task="generate")).reason == "default"
    assert (await registry.decide(req(""), task="generate")).reason == "default"
    assert (await registry.decide(req("strong@1"), task="generate")).reason == "pinned"
    chat = await registry.decide(req("chat"), task="generate")
    assert (chat.primary.model_version, chat.reason) == ("strong@2", "alias:chat")
    assert chat.primary.price_per_hour == 2.0, "a version's own price beats its pool's"
    legacy = await registry.decide(req("legacy"), task="generate")
    assert legacy.primary.deprecation == "strong@1 is deprecated; move to strong@2"


async def test_fast_accurate_picks_by_difficulty() -> None:
    registry = make(routes={"chat": {"policies": [{"kind": "fast_accurate", "fast": "fast", "accurate": "strong"}]}})
    easy = await registry.decide(req("chat"), task="generate")
    hard = await registry.decide(
        req("chat", "Prove, step by step, that there are infinitely many primes."), task="generate"
    )
    assert (easy.primary.model_version, easy.reason) == ("fast@1", "alias:chat,fast")
    assert (hard.primary.model_version, hard.reason) == ("strong@2", "alias:chat,accurate")
    assert easy.cascade is None
    difficulty = dict(easy.attributes)["headrace.route.difficulty"]
    assert isinstance(difficulty, float) and difficulty < 0.5


async def test_a_cascade_plan_comes_with_the_fast_choice_only() -> None:
    registry = make(
        routes={"chat": {"policies": [{"kind": "fast_accurate", "fast": "fast", "accurate": "smart", "cascade": {}}]}}
    )
    easy = await registry.decide(req("chat"), task="generate")
    assert easy.cascade is not None and easy.cascade.escalate_to == "smart"
    hard = await registry.decide(req("chat", "Explain why, step by step"), task="generate")
    assert hard.cascade is None and hard.reason == "alias:chat,accurate,alias:smart"


async def test_routes_nest_through_aliases() -> None:
    registry = make(
        routes={
            "chat": {"policies": [{"kind": "ab", "arms": [{"name": "new", "target": "smart", "weight": 1}]}]},
            "smart": {"policies": [{"kind": "fast_accurate", "fast": "fast", "accurate": "strong"}]},
        }
    )
    decision = await registry.decide(req("chat", user="u1"), task="generate")
    assert decision.reason == "alias:chat,ab:chat/new,alias:smart,fast"
    assert decision.primary.model_version == "fast@1"
    assert len(decision.observers) == 1, "the A/B arm wants to hear the outcome"


async def test_policies_in_a_chain_see_the_previous_target() -> None:
    registry = make(
        routes={
            "chat": {
                "policies": [
                    {"kind": "fast_accurate", "fast": "fast", "accurate": "strong"},
                    {"kind": "ab", "experiment": "pin", "arms": [{"name": "v1", "target": "strong@1", "weight": 1}]},
                ]
            }
        }
    )
    decision = await registry.decide(req("chat"), task="generate")
    assert decision.reason == "alias:chat,fast,ab:pin/v1"
    assert decision.primary.model_version == "strong@1"


async def test_fallbacks_resolve_to_versions_and_skip_the_primary() -> None:
    registry = make(fallbacks={"strong": ["strong", "fast"]})
    decision = await registry.decide(req("chat"), task="generate")
    assert [f.model_version for f in decision.fallbacks] == ["fast@1"]
    assert (await registry.decide(req("fast"), task="generate")).fallbacks == ()


async def test_unknown_names_are_not_found() -> None:
    with pytest.raises(NotFound, match="unknown model 'ghost'"):
        await make().decide(req("ghost"), task="generate")
