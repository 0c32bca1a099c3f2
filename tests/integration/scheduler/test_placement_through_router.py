"""Placement seen from a client of the router: the router hashes prompt
prefixes and passes sessions on, the scheduler's policy picks the worker
(route.worker_id says which), and admission statuses reach the client with
their retry-after hint. The whole mesh in-process over real gRPC, on the
synthetic engine."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import grpc
import grpc.aio
import pytest

from headrace.local.redis_server import RedisServer
from headrace.runtime.config import Settings
from headrace.v1 import generation_pb2
from tests.support.mesh import InProcessMesh, start_mesh

SYSTEM_PROMPTS = [f"You are assistant number {n} of the mill. Answer in the style of a miller. " * 12 for n in range(8)]


def settings(redis_url: str) -> Settings:
    fast = {"kind": "synthetic", "ttft_ms": 1, "tokens_per_s": 5000, "max_concurrency": 16}
    return Settings(
        redis_url=redis_url,
        pools={
            "prefix": {"engine": fast, "workers": 3},
            "session": {"engine": fast, "workers": 3},
            # One slot, a slow answer, no queue: the second caller is refused.
            "tiny": {
                "engine": {"kind": "synthetic", "ttft_ms": 1, "tokens_per_s": 20, "max_concurrency": 1},
                "workers": 1,
            },
        },
        models={
            "chat": {"default_version": "1", "versions": {"1": {"pool": "prefix"}}},
            "talk": {"default_version": "1", "versions": {"1": {"pool": "session"}}},
            "small": {"default_version": "1", "versions": {"1": {"pool": "tiny"}}},
        },
        default_model="chat",
        scheduler={
            "metrics_port": None,
            "pools": {
                "prefix": {"policy": "prefix_affinity", "affinity_load_factor": 2.0},
                "session": {"policy": "session_affinity"},
                "tiny": {"queue_limit": 0},
            },
        },
        router={"metrics_port": None},
        cache={"metrics_port": None},
        worker={"metrics_port_offset": None},
    )


@pytest.fixture(scope="module")
async def mesh(redis_server: RedisServer) -> AsyncIterator[InProcessMesh]:
    running = await start_mesh(settings(redis_server.url))
    yield running
    await running.close()


def chat(model: str, system: str, question: str, **kwargs: object) -> generation_pb2.GenerateRequest:
    return generation_pb2.GenerateRequest(
        model=model,
        messages=[
            generation_pb2.ChatMessage(role="system", content=system),
            generation_pb2.ChatMessage(role="user", content=question),
        ],
        sampling=generation_pb2.SamplingParams(max_tokens=4),
        cache=generation_pb2.CachePolicy(no_cache=True, no_store=True),
        **kwargs,  # type: ignore[arg-type]
    )


async def test_requests_sharing_a_system_prompt_go_to_one_worker(mesh: InProcessMesh) -> None:
    router = mesh.router_stub()
    homes: dict[int, Counter[str]] = {}
    for round_ in range(3):
        answers = await asyncio.gather(
            *(
                router.Generate(chat("chat", system, f"question {round_}-{n}?"))
                for n, system in enumerate(SYSTEM_PROMPTS)
            )
        )
        for n, answer in enumerate(answers):
            homes.setdefault(n, Counter())[answer.route.worker_id] += 1
    # Light load, so nothing spills: each system prompt always on its worker,
    # and the eight prompts spread over more than one worker.
    assert all(len(workers) == 1 for workers in homes.values()), homes
    assert len({next(iter(w)) for w in homes.values()}) >= 2


async def test_a_session_stays_on_its_worker(mesh: InProcessMesh) -> None:
    router = mesh.router_stub()
    workers: dict[str, set[str]] = {}
    for turn in range(4):
        for session in ("alice", "bob", "carol", "dave", "erin"):
            answer = await router.Generate(chat("talk", "be brief", f"turn {turn}", session_id=session))
            workers.setdefault(session, set()).add(answer.route.worker_id)
    assert all(len(w) == 1 for w in workers.values()), workers
    assert len(set().union(*workers.values())) >= 2


async def test_a_full_pool_is_resource_exhausted_for_the_client_with_retry_after(mesh: InProcessMesh) -> None:
    router = mesh.router_stub()
    slow = router.GenerateStream(
        generation_pb2.GenerateRequest(
            model="small",
            prompt="a long answer",
            sampling=generation_pb2.SamplingParams(max_tokens=40),
            cache=generation_pb2.CachePolicy(no_cache=True, no_store=True),
        )
    )
    await slow.read()  # first token: it holds the only slot now
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await router.Generate(chat("small", "hi", "there"))
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "no free slot in pool 'tiny' and its queue is full" in (refused.value.details() or "")
    assert int(dict(refused.value.trailing_metadata() or ())["retry-after"]) >= 1
    slow.cancel()
    # The cancelled stream's lease comes back: the pool serves again.
    for _ in range(100):
        try:
            answer = await router.Generate(chat("small", "hi", "again"))
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            await asyncio.sleep(0.05)
            continue
        assert answer.route.worker_id == "tiny-0"
        break
    else:
        raise AssertionError("the cancelled stream's slot never came back")
