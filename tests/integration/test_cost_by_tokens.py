"""Cost by token share under continuous batching, through the whole mesh:
requests sharing the engine pay by the tokens they made it process (a long
prompt more than a short one), their costs add up to the worker's busy
seconds x the pool's price, and each answer says its cost (gRPC Cost,
HTTP usage.cost_usd and x-headrace-cost-usd)."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from prometheus_client import REGISTRY

from headrace.local.redis_server import RedisServer
from headrace.v1 import generation_pb2
from tests.integration.test_mesh_grpc import greedy, mesh_settings
from tests.support.mesh import start_mesh

PRICE_PER_HOUR = 3.6  # mesh_settings' smollm2 pool


def busy_seconds() -> float:
    return REGISTRY.get_sample_value("headrace_worker_busy_seconds_total") or 0.0


async def test_costs_split_by_tokens_add_up_to_the_workers_busy_time(redis_server: RedisServer) -> None:
    mesh = await start_mesh(mesh_settings(redis_server.url), http=True)
    long_prompt = " ".join("w" for _ in range(3000))
    costs: list[float] = []
    try:
        stub = mesh.router_stub()
        before = busy_seconds()

        async def grpc_cost(i: int, prompt: str) -> float:
            answer: generation_pb2.GenerateResponse = await stub.Generate(greedy(f"{i} {prompt}", max_tokens=200))
            return answer.cost.usd

        async with httpx.AsyncClient(base_url=mesh.http_url, timeout=60) as client:

            async def http_cost(i: int, prompt: str) -> float:
                body = {"model": "smollm2", "prompt": f"{i} {prompt}", "max_tokens": 200, "temperature": 0}
                answer = await client.post("/v1/completions", json=body)
                assert answer.status_code == 200, answer.text
                cost = float(answer.json()["usage"]["cost_usd"])
                assert float(answer.headers["x-headrace-cost-usd"]) == pytest.approx(cost, abs=1e-9)
                return cost

            # Pairs sharing the engine: same completion length, a 3,000-token
            # prompt beside a 2-token one. The long one pays for its prefill.
            for i, ask in enumerate((grpc_cost, grpc_cost, http_cost)):
                long, short = await asyncio.gather(ask(2 * i, long_prompt), ask(2 * i + 1, "short"))
                assert long > short > 0, (ask.__name__, long, short)
                costs += [long, short]
        spent_s = busy_seconds() - before
    finally:
        await mesh.close()
    # Conservation: every busy second of the worker is charged to some request, once.
    assert sum(costs) == pytest.approx(spent_s * PRICE_PER_HOUR / 3600.0, rel=0.01)
