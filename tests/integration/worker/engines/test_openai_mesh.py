"""An `openai`-engine pool in a real mesh (router, cache, scheduler, worker
over gRPC on loopback) in front of the fixed-response backend of
bench-peers (starlette on 127.0.0.1), counting what the backend is asked:
unary requests reach it as unary calls, streamed ones streamed, and load
reports do not read its model list."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import httpx2
import pytest
import uvicorn
from prometheus_client import REGISTRY

from bench.peers_backend import MODEL, TEXT, build_app
from headrace.local.redis_server import RedisServer
from headrace.runtime.config import Settings
from headrace.v1 import generation_pb2
from tests.support.mesh import InProcessMesh, start_mesh


@pytest.fixture
async def backend() -> AsyncIterator[str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(build_app(), log_level="warning", access_log=False, lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    await task


@pytest.fixture
async def mesh(redis_server: RedisServer, backend: str) -> AsyncIterator[InProcessMesh]:
    settings = Settings(
        redis_url=redis_server.url,
        pools={"fixed": {"engine": {"kind": "openai", "base_url": f"{backend}/v1"}}},  # type: ignore[dict-item]
        models={MODEL: {"default_version": "1", "versions": {"1": {"pool": "fixed"}}}},  # type: ignore[dict-item]
        default_embedding_model="",
        router={"metrics_port": None},  # type: ignore[arg-type]
        cache={"metrics_port": None, "semantic": {"enabled": False}},  # type: ignore[arg-type]
        # Load reports ten times a second: many of them within the test.
        scheduler={"metrics_port": None, "report_interval_ms": 100},  # type: ignore[arg-type]
        worker={"metrics_port_offset": None},  # type: ignore[arg-type]
    )
    running = await start_mesh(settings, http=True)
    yield running
    await running.close()


def chat(content: str) -> generation_pb2.GenerateRequest:
    return generation_pb2.GenerateRequest(
        model=MODEL,
        messages=[generation_pb2.ChatMessage(role="user", content=content)],
        sampling=generation_pb2.SamplingParams(temperature=0.0),
    )


def ttft_count() -> float:
    return REGISTRY.get_sample_value("headrace_router_ttft_seconds_count", {"model": f"{MODEL}@1"}) or 0.0


async def asked(backend: str) -> dict[str, int]:
    async with httpx2.AsyncClient() as client:
        return dict((await client.get(f"{backend}/stats")).json())


async def test_unary_requests_are_unary_upstream_and_streams_are_streamed(mesh: InProcessMesh, backend: str) -> None:
    stub = mesh.router_stub()
    ttfts = ttft_count()
    answer = await stub.Generate(chat("unary, please"))
    assert answer.text == TEXT and answer.route.cache == generation_pb2.CACHE_OUTCOME_MISS
    assert answer.usage.completion_tokens == 6
    assert (await asked(backend)).get("unary") == 1 and not (await asked(backend)).get("streamed")
    # One piece from the upstream: no first token apart from the last, so no
    # TTFT (not the total time in its place), and none in the histogram.
    assert answer.timing.ttft_ms == 0 and answer.timing.total_ms > 0
    assert ttft_count() == ttfts
    chunks = [chunk async for chunk in stub.GenerateStream(chat("streamed, please"))]
    assert "".join(c.text for c in chunks) == TEXT and len(chunks) > 2
    assert 0 < chunks[-1].timing.ttft_ms <= chunks[-1].timing.total_ms
    assert ttft_count() == ttfts + 1
    async with httpx2.AsyncClient() as client:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "over HTTP"}], "temperature": 0}
        response = await client.post(f"{mesh.http_url}/v1/chat/completions", json=body)
    assert response.json()["choices"][0]["message"]["content"] == TEXT
    seen = await asked(backend)
    assert (seen.get("unary"), seen.get("streamed")) == (2, 1)


async def test_load_reports_do_not_read_the_upstreams_model_list(mesh: InProcessMesh, backend: str) -> None:
    await mesh.router_stub().Generate(chat("one request"))
    before = await asked(backend)
    # Ten load reports a second: 15 or so in this time.
    await asyncio.sleep(1.5)
    after = await asked(backend)
    assert before.get("models") == after.get("models") == 1  # read once, at the worker's start
