"""Fast vs accurate over the real mesh: easy requests to the cheap pool,
hard ones to the strong pool; a cascade answers fast first and escalates
an answer that fails its check (here: cut off by its token budget)."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import REGISTRY

from headrace.local.redis_server import RedisServer
from headrace.runtime.config import Settings
from headrace.v1 import generation_pb2
from tests.support.mesh import start_mesh
from tests.support.routing import ask, routing_settings, synthetic

HARD = "Explain why the sky is blue, step by step."


def settings(redis_url: str, cascade: dict[str, Any] | None) -> Settings:
    policy: dict[str, Any] = {"kind": "fast_accurate", "fast": "tiny", "accurate": "big"}
    if cascade is not None:
        policy["cascade"] = cascade
    return routing_settings(
        redis_url,
        pools={
            "small": {"engine": synthetic(), "price_per_hour": 0.36},
            "large": {"engine": synthetic(), "price_per_hour": 36.0},
        },
        models={
            "tiny": {"default_version": "1", "versions": {"1": {"pool": "small"}}},
            "big": {"default_version": "1", "versions": {"1": {"pool": "large"}}},
        },
        aliases={"smart": "big"},
        default_model="big",
        routing={"routes": {"smart": {"policies": [policy]}}},
    )


def cascades(outcome: str) -> float:
    return REGISTRY.get_sample_value("headrace_router_cascade_total", {"route": "smart", "outcome": outcome}) or 0.0


async def test_easy_requests_go_fast_and_hard_ones_accurate(redis_server: RedisServer) -> None:
    mesh = await start_mesh(settings(redis_server.url, cascade=None))
    try:
        stub = mesh.router_stub()
        easy_call = stub.Generate(ask("smart", prompt="What is the capital of France?"))
        easy = await easy_call
        hard = await stub.Generate(ask("smart", prompt=HARD))
        assert (easy.model, easy.route.reason) == ("tiny@1", "alias:smart,fast")
        assert (hard.model, hard.route.reason) == ("big@1", "alias:smart,accurate")
        assert dict(await easy_call.initial_metadata())["x-headrace-route"] == "alias:smart,fast"
        # A pinned model is never re-routed.
        assert (await stub.Generate(ask("big", prompt="What is 1 + 1?"))).model == "big@1"
    finally:
        await mesh.close()


async def test_a_cascade_escalates_a_cut_off_fast_answer(redis_server: RedisServer) -> None:
    mesh = await start_mesh(settings(redis_server.url, cascade={"fast_max_tokens": 3}))
    escalated_before = cascades("escalated")
    try:
        chunks = [
            c async for c in mesh.router_stub().GenerateStream(ask("smart", prompt="Name a river.", max_tokens=6))
        ]
        first, last = chunks[0], chunks[-1]
        assert first.model == "big@1"
        assert first.route.reason == "alias:smart,fast,cascade-escalated"
        assert sum(len(c.token_ids) for c in chunks) == 6, "the client sees only the accurate answer"
        assert last.usage.completion_tokens == 6
        # The cost includes the fast attempt: its engine seconds are added at
        # the small pool's price (0.0001 USD/s), below the large pool's (0.01 USD/s).
        assert last.cost.engine_seconds > 0
        assert last.cost.engine_seconds * 0.0001 < last.cost.usd < last.cost.engine_seconds * 0.01
        assert cascades("escalated") - escalated_before == 1
    finally:
        await mesh.close()


@pytest.mark.parametrize(
    "cascade",
    [
        # Cut off at the client's own max_tokens: not the fast model's fault.
        {},
        # A fast budget above the client's is not used; truncation not checked.
        {"escalate_on_truncation": False, "fast_max_tokens": 10},
    ],
)
async def test_a_cascade_keeps_a_fast_answer_that_passes(redis_server: RedisServer, cascade: dict[str, Any]) -> None:
    mesh = await start_mesh(settings(redis_server.url, cascade=cascade))
    kept_before = cascades("kept")
    try:
        answer = await mesh.router_stub().Generate(ask("smart", prompt="Name a river.", max_tokens=4))
        assert (answer.model, answer.route.reason) == ("tiny@1", "alias:smart,fast")
        # The synthetic engine always runs to max_tokens: the client's 4, never more.
        assert answer.usage.completion_tokens == 4 and answer.text
        assert answer.finish_reason == generation_pb2.FINISH_REASON_LENGTH
        assert cascades("kept") - kept_before == 1
    finally:
        await mesh.close()
