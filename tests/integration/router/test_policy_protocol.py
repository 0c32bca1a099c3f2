"""Every routing policy keeps the one protocol: same async signature, only
appends to the choice it is given, and chooses targets the registry can
serve. A new policy class that is not listed here fails this test."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import random
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis

from headrace.local.redis_server import RedisServer
from headrace.models.registry import ModelRegistry
from headrace.runtime.config import Settings
from headrace.runtime.routing_settings import AbPolicySettings, CanarySettings, FastAccuratePolicySettings
from services.router import routing as routing_package
from services.router.routing.arm_stats import ArmStatsStore
from services.router.routing.canary import CanaryController
from services.router.routing.decision import Choice, RequestOutcome, RoutingRequest
from services.router.routing.policies import ab_split, canary, fast_accurate
from services.router.routing.policies.base import RoutingPolicy
from services.router.routing.policies.difficulty import DifficultyScorer

SETTINGS = Settings(
    pools={"p": {"engine": {"kind": "synthetic"}}},
    models={
        "fast": {"default_version": "1", "versions": {"1": {"pool": "p"}}},
        "strong": {"default_version": "1", "versions": {"1": {"pool": "p"}, "2": {"pool": "p"}}},
    },
    aliases={"chat": "strong"},
    default_model="strong",
)

PolicyFactory = Callable[[aioredis.Redis], RoutingPolicy]

FACTORIES: dict[str, PolicyFactory] = {
    "fast_accurate": lambda redis: fast_accurate.FastAccuratePolicy(
        "chat",
        FastAccuratePolicySettings(fast="fast", accurate="strong", cascade={}),  # type: ignore[arg-type]
        DifficultyScorer(FastAccuratePolicySettings(fast="fast", accurate="strong").scorer),
    ),
    "ab": lambda redis: ab_split.AbSplitPolicy(
        "chat",
        AbPolicySettings.model_validate(
            {"arms": [{"name": "a", "target": "strong@1", "weight": 1}, {"name": "b", "target": "fast", "weight": 1}]}
        ),
        ArmStatsStore(redis),
        rng=random.Random(0),
    ),
    "canary": lambda redis: canary.CanaryPolicy(
        CanaryController(
            "strong",
            "1",
            CanarySettings(version="2", steps=[50], attempt=random.randrange(10**9)),
            redis,
            ArmStatsStore(redis),
            state_ttl_s=0.01,
        ),
        rng=random.Random(0),
    ),
}

REQUESTS = [
    RoutingRequest(request_id="r1", tenant="t", model="chat", text="What is 2 + 2?"),
    RoutingRequest(request_id="r2", tenant="t", model="chat", text="Prove it step by step.", user="alice"),
    RoutingRequest(request_id="r3", tenant="t", model="chat", text="hello " * 500, session_id="s1", max_tokens=64),
]
CHOICES = [
    Choice(target="strong", reasons=("alias:chat",)),
    Choice(target="strong", reasons=("default",)),
]


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


def test_every_policy_class_is_covered() -> None:
    """Policy classes are found by their `choose` method in policies/*."""
    found: set[str] = set()
    package = importlib.import_module(f"{routing_package.__name__}.policies")
    for module_info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{module_info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__ and "choose" in vars(cls) and cls is not RoutingPolicy:
                found.add(cls.__name__)
    covered = {type(factory(aioredis.Redis())).__name__ for factory in FACTORIES.values()}
    assert found == covered, f"add a factory for {found - covered}"


@pytest.mark.parametrize("kind", sorted(FACTORIES))
async def test_policy_keeps_the_protocol(kind: str, redis: aioredis.Redis) -> None:
    policy = FACTORIES[kind](redis)
    assert isinstance(policy, RoutingPolicy)
    assert inspect.iscoroutinefunction(policy.choose)
    assert list(inspect.signature(policy.choose).parameters) == ["request", "choice"]
    assert policy.name.split(":", 1)[0] in {"fast_accurate", "ab", "canary"} and ":" in policy.name
    registry = ModelRegistry(SETTINGS)
    for request in REQUESTS:
        for given in CHOICES:
            chosen = await policy.choose(request, given)
            assert isinstance(chosen, Choice)
            # Only appends: what came before stays, in order.
            assert chosen.reasons[: len(given.reasons)] == given.reasons
            assert chosen.observers[: len(given.observers)] == given.observers
            assert registry.resolve(chosen.target, task="generate").model_version
            # The same caller gets the same choice (sticky keys, deterministic scoring).
            if request.user or request.session_id:
                again = await policy.choose(request, given)
                assert (again.target, again.reasons) == (chosen.target, chosen.reasons)
            outcome = RequestOutcome(
                attempts=(RequestOutcome.Attempt(model_version="strong@1", worker_id="w", ttft_s=0.01, total_s=0.02),),
                ttft_s=0.01,
                total_s=0.02,
            )
            for observer in chosen.observers:
                await observer(outcome)
