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

pytestmark = pytest.mark.integration

PRICE_PER_HOUR = 3.6  # mesh_settings' smollm2 pool


def busy_seconds() -> float:
    return REGISTRY.get_sample_value("headrace_worker_busy_seconds_total") or 0.0


async def test_costs_split_by_tokens_add_up_to_the_workers_busy_time(redis_server: RedisServer) -> None:
    mesh = await start_mesh(mesh_settings(redis_server.url), http=True)
    try:
        stub = mesh.router_stub()
        before = busy_seconds()
        long_prompt = " ".join("w" for _ in range(3000))

        async def grpc_answer(i: int, prompt: str) -> generation_pb2.GenerateResponse:
            response: generation_pb2.GenerateResponse = await stub.Generate(greedy(f"{i} {prompt}", max_tokens=24))
            return response

        async with httpx.AsyncClient(base_url=mesh.http_url, timeout=60) as client:

            async def http_answer(i: int, prompt: str) -> httpx.Response:
                body = {"model": "smollm2", "prompt": f"{i} {prompt}", "max_tokens": 24, "temperature": 0}
                return await client.post("/v1/completions", json=body)

            results = await asyncio.gather(
                *(grpc_answer(i, long_prompt) for i in range(3)),
                *(grpc_answer(i, "short") for i in range(3, 6)),
                *(http_answer(i, long_prompt) for i in range(6, 8)),
                *(http_answer(i, "short") for i in range(8, 10)),
            )
        spent_s = busy_seconds() - before
    finally:
        await mesh.close()
    grpc_long = [r.cost.usd for r in results[:3] if isinstance(r, generation_pb2.GenerateResponse)]
    grpc_short = [r.cost.usd for r in results[3:6] if isinstance(r, generation_pb2.GenerateResponse)]
    http_costs = []
    for answer in results[6:]:
        assert isinstance(answer, httpx.Response) and answer.status_code == 200, answer
        cost = answer.json()["usage"]["cost_usd"]
        assert float(answer.headers["x-headrace-cost-usd"]) == pytest.approx(cost, abs=1e-9)
        http_costs.append(cost)
    assert len(grpc_long) == len(grpc_short) == 3 and all(c > 0 for c in grpc_long + grpc_short + http_costs)
    # Same completion length, sharing the engine: the 3,000-token prompts pay for their prefill.
    assert min(grpc_long) > max(grpc_short)
    assert min(http_costs[:2]) > max(http_costs[2:])
    # Conservation: every busy second of the worker is charged to some request, once.
    total = sum(grpc_long) + sum(grpc_short) + sum(http_costs)
    assert total == pytest.approx(spent_s * PRICE_PER_HOUR / 3600.0, rel=0.01)
