"""The mesh over real gRPC on loopback with a real Redis, on the synthetic
engine (these tests are about the mesh, not a model)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import REGISTRY

from headrace.local.redis_server import RedisServer
from headrace.runtime.config import Settings
from headrace.runtime.group_commit import GroupCommit
from headrace.v1 import generation_pb2, models_pb2, scheduler_pb2, worker_pb2
from tests.support.mesh import InProcessMesh, start_mesh


def mesh_settings(redis_url: str, **overrides: object) -> Settings:
    base: dict[str, object] = {
        "redis_url": redis_url,
        "pools": {
            "smollm2": {"engine": {"kind": "synthetic", "ttft_ms": 5, "tokens_per_s": 2000}, "price_per_hour": 3.6},
            "embed": {"engine": {"kind": "synthetic"}},
        },
        "models": {
            "smollm2": {"default_version": "1", "versions": {"1": {"pool": "smollm2"}}},
            "minilm": {"task": "embed", "default_version": "1", "versions": {"1": {"pool": "embed"}}},
        },
        "default_embedding_model": "minilm",
        "limits": {"max_message_bytes": 256 * 1024, "max_prompt_chars": 10_000, "max_tokens": 512},
        "router": {"metrics_port": None},
        # The semantic cache has tests of its own (tests/integration/cache).
        "cache": {"metrics_port": None, "semantic": {"enabled": False}},
        "scheduler": {"metrics_port": None},
        "worker": {"metrics_port_offset": None},
    }
    base.update(overrides)
    return Settings(**base)  # type: ignore[arg-type]


@pytest.fixture
async def mesh(redis_server: RedisServer) -> AsyncIterator[InProcessMesh]:
    running = await start_mesh(mesh_settings(redis_server.url))
    yield running
    await running.close()


def greedy(prompt: str, max_tokens: int = 8, **kwargs: object) -> generation_pb2.GenerateRequest:
    return generation_pb2.GenerateRequest(
        prompt=prompt,
        sampling=generation_pb2.SamplingParams(temperature=0.0, max_tokens=max_tokens),
        **kwargs,  # type: ignore[arg-type]
    )


async def test_generate_answers_and_says_how_it_was_served(mesh: InProcessMesh) -> None:
    call = mesh.router_stub().Generate(greedy("unary hello", max_tokens=6))
    answer = await call
    headers = dict(await call.initial_metadata())
    assert answer.model == "smollm2@1"
    assert answer.usage.completion_tokens == 6 and len(answer.token_ids) == 6
    assert answer.finish_reason == generation_pb2.FINISH_REASON_LENGTH
    assert answer.route.worker_id == "smollm2-0" and answer.route.attempts == 1
    assert headers["x-request-id"] == answer.request_id
    assert headers["x-headrace-model"] == "smollm2@1"
    assert headers["x-headrace-route"] == "default"
    assert headers["x-headrace-cache"] == "miss"
    assert answer.timing.ttft_ms > 0 and answer.timing.total_ms >= answer.timing.ttft_ms
    # Cost is the engine time charged times the pool's price (3.6 USD/h = 0.001 USD/s).
    assert answer.cost.engine_seconds > 0
    assert answer.cost.usd == pytest.approx(answer.cost.engine_seconds * 0.001)


def worker_calls(method: str) -> float:
    """Calls the workers of this process have answered OK, by method."""
    value = REGISTRY.get_sample_value(
        "headrace_grpc_server_handled_total", {"method": f"/headrace.v1.Worker/{method}", "code": "OK"}
    )
    return value or 0.0


async def test_a_unary_request_takes_the_workers_complete_and_a_stream_its_generate(mesh: InProcessMesh) -> None:
    before = worker_calls("Complete"), worker_calls("Generate")
    answer = await mesh.router_stub().Generate(greedy("unary complete", max_tokens=5))
    assert answer.usage.completion_tokens == 5 and answer.timing.ttft_ms > 0
    assert (worker_calls("Complete"), worker_calls("Generate")) == (before[0] + 1, before[1])
    chunks = [c async for c in mesh.router_stub().GenerateStream(greedy("streamed generate", max_tokens=5))]
    assert "".join(c.text for c in chunks) and chunks[-1].usage.completion_tokens == 5
    assert (worker_calls("Complete"), worker_calls("Generate")) == (before[0] + 1, before[1] + 1)


async def test_a_caller_request_id_is_kept(mesh: InProcessMesh) -> None:
    call = mesh.router_stub().Generate(greedy("with id"), metadata=(("x-request-id", "my-req-42"),))
    assert (await call).request_id == "my-req-42"


async def test_stream_sends_route_first_and_usage_last(mesh: InProcessMesh) -> None:
    chunks = [c async for c in mesh.router_stub().GenerateStream(greedy("stream me", max_tokens=5))]
    assert len(chunks) == 5
    assert chunks[0].model == "smollm2@1" and chunks[0].route.model_version == "smollm2@1"
    assert chunks[-1].finish_reason == generation_pb2.FINISH_REASON_LENGTH
    assert chunks[-1].usage.completion_tokens == 5
    assert all(not c.finish_reason for c in chunks[:-1])
    assert "".join(c.text for c in chunks).count(" ") == 4


async def test_concurrent_lookups_each_get_their_own_answer(
    mesh: InProcessMesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under concurrency the router's lookups and stores go several to a
    call (LookupMany, StoreMany): each request still gets its own answer
    (the synthetic engine's words depend on the prompt), and new ones miss."""
    calls: list[tuple[str, int]] = []
    send = GroupCommit._send

    async def counted(self: GroupCommit[Any, Any], batch: list[Any]) -> None:
        calls.append((self._name, len(batch)))
        await send(self, batch)

    monkeypatch.setattr(GroupCommit, "_send", counted)
    stub = mesh.router_stub()
    tag = uuid.uuid4().hex[:8]
    stored = [f"coalesced {tag} {i}" for i in range(12)]
    firsts = await asyncio.gather(*(stub.Generate(greedy(prompt)) for prompt in stored))
    assert len({first.text for first in firsts}) == len(stored)
    for _ in range(200):  # the stores run off the critical path
        probe = await stub.Generate(greedy(stored[-1]))
        if probe.route.cache == generation_pb2.CACHE_OUTCOME_HIT_EXACT:
            break
        await asyncio.sleep(0.05)
    fresh = [f"fresh {tag} {i}" for i in range(12)]
    # Interleaved, all at once.
    asked = [prompt for pair in zip(stored, fresh, strict=True) for prompt in pair]
    answers = dict(zip(asked, await asyncio.gather(*(stub.Generate(greedy(p)) for p in asked)), strict=True))
    for prompt, first in zip(stored, firsts, strict=True):
        assert answers[prompt].route.cache == generation_pb2.CACHE_OUTCOME_HIT_EXACT, prompt
        assert answers[prompt].text == first.text
    assert all(answers[p].route.cache == generation_pb2.CACHE_OUTCOME_MISS for p in fresh)
    # Several went together, as the test means to check.
    assert max(size for name, size in calls if name == "cache-lookup-batch") > 1
    assert max(size for name, size in calls if name == "cache-store-batch") > 1


async def test_identical_greedy_requests_hit_the_exact_cache(mesh: InProcessMesh) -> None:
    stub = mesh.router_stub()
    first = await stub.Generate(greedy("cache me please"))
    await asyncio.sleep(0.2)  # the store runs off the critical path
    call = stub.Generate(greedy("cache me please"))
    second = await call
    assert dict(await call.initial_metadata())["x-headrace-cache"] == "hit-exact"
    assert second.route.cache == generation_pb2.CACHE_OUTCOME_HIT_EXACT
    assert second.text == first.text and second.cost.usd == 0
    assert second.route.cache_entry_id
    # A sampled request is never answered from the cache.
    sampled = generation_pb2.GenerateRequest(
        prompt="cache me please", sampling=generation_pb2.SamplingParams(max_tokens=8)
    )
    call = stub.Generate(sampled)
    await call
    assert dict(await call.initial_metadata())["x-headrace-cache"] == "miss"
    # no-cache skips the lookup.
    fresh = greedy("cache me please", cache=generation_pb2.CachePolicy(no_cache=True))
    assert (await stub.Generate(fresh)).route.cache == generation_pb2.CACHE_OUTCOME_BYPASS


@pytest.mark.parametrize("how", ["grpc-unary", "grpc-stream", "http-unary"])
async def test_a_cancelled_call_stops_the_engine_long_before_its_answer_would_end(
    redis_server: RedisServer, how: str
) -> None:
    # 512 tokens at 50/s would take 10 s: stopping within 1 s is the abort.
    # A whole answer comes from the worker's Complete, a stream from its
    # Generate; over HTTP the client closes its connection mid-answer.
    slow_pool = {"engine": {"kind": "synthetic", "ttft_ms": 5, "tokens_per_s": 50}}
    mesh = await start_mesh(
        mesh_settings(redis_server.url, pools={"smollm2": slow_pool, "embed": {"engine": {"kind": "synthetic"}}}),
        http=how == "http-unary",
    )
    writer: asyncio.StreamWriter | None = None
    try:
        slow = generation_pb2.GenerateRequest(prompt="long", sampling=generation_pb2.SamplingParams(max_tokens=512))
        call: Any = None
        if how == "http-unary":
            host, port = mesh.http_url.removeprefix("http://").rsplit(":", 1)
            _, writer = await asyncio.open_connection(host, int(port))
            body = b'{"model": "smollm2", "prompt": "long", "max_tokens": 512}'
            writer.write(
                b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )
        elif how == "grpc-stream":
            call = mesh.router_stub().GenerateStream(slow)
        else:
            call = mesh.router_stub().Generate(slow)
        engine = mesh.workers[0].app.engine
        deadline = time.monotonic() + 5.0
        while not engine.stats().running and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert engine.stats().running == 1
        await asyncio.sleep(0.1)
        if writer is not None:
            writer.close()
        else:
            call.cancel()
        deadline = time.monotonic() + 1.0
        while engine.stats().running and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert engine.stats().running == 0
        # ... and the lease is given back.
        deadline = time.monotonic() + 1.0
        while len(mesh.dispatcher.leases) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert len(mesh.dispatcher.leases) == 0
    finally:
        if writer is not None:
            writer.close()
        await mesh.close()


async def test_leases_are_released_after_each_request(mesh: InProcessMesh) -> None:
    stub = mesh.router_stub()
    await asyncio.gather(
        *(stub.Generate(greedy(f"p{i}", cache=generation_pb2.CachePolicy(no_cache=True))) for i in range(10))
    )
    await asyncio.sleep(0.2)
    assert len(mesh.dispatcher.leases) == 0


async def test_embed_goes_to_the_embedding_pool(mesh: InProcessMesh) -> None:
    call = mesh.router_stub().Embed(generation_pb2.EmbedRequest(inputs=["a", "b"]))
    response = await call
    assert response.model == "minilm@1"
    assert [e.index for e in response.embeddings] == [0, 1]
    assert len(response.embeddings[0].values) == 384
    assert dict(await call.initial_metadata())["x-headrace-model"] == "minilm@1"


async def test_list_models_shows_registry_and_ready_workers(mesh: InProcessMesh) -> None:
    listing = await mesh.router_stub().ListModels(models_pb2.ListModelsRequest())
    by_id = {m.id: m for m in listing.models}
    assert set(by_id) == {"smollm2", "smollm2@1", "minilm", "minilm@1"}
    assert by_id["smollm2"].resolves_to == "smollm2@1"
    assert by_id["smollm2"].ready_workers == 1 and by_id["smollm2"].engine == "synthetic"
    assert by_id["minilm"].task == models_pb2.MODEL_TASK_EMBED


@pytest.mark.parametrize(
    ("request_", "code", "message"),
    [
        (generation_pb2.GenerateRequest(), grpc.StatusCode.INVALID_ARGUMENT, "prompt / messages: set exactly one"),
        (
            greedy("x", max_tokens=100_000),
            grpc.StatusCode.INVALID_ARGUMENT,
            "sampling.max_tokens: 100000 is outside [1, 512]",
        ),
        (
            generation_pb2.GenerateRequest(prompt="x", sampling=generation_pb2.SamplingParams(top_p=1.5)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "sampling.top_p",
        ),
        (greedy("x", model="gpt-9"), grpc.StatusCode.NOT_FOUND, "unknown model 'gpt-9'; available: minilm, smollm2"),
        (greedy("x", model="smollm2@7"), grpc.StatusCode.NOT_FOUND, "has no version '7'"),
        (greedy("x", model="minilm"), grpc.StatusCode.INVALID_ARGUMENT, "is an embedding model and cannot generate"),
        (greedy("y" * 20_000), grpc.StatusCode.INVALID_ARGUMENT, "over the limit of 10000"),
        (greedy("z" * 300_000), grpc.StatusCode.RESOURCE_EXHAUSTED, "message larger than max"),
    ],
)
async def test_bad_input_gets_a_clear_status(
    mesh: InProcessMesh, request_: generation_pb2.GenerateRequest, code: grpc.StatusCode, message: str
) -> None:
    for rpc in (mesh.router_stub().Generate, mesh.router_stub().GenerateStream):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            result = rpc(request_)
            if isinstance(result, grpc.aio.UnaryStreamCall):
                async for _ in result:
                    pass
            else:
                await result
        assert caught.value.code() == code
        assert message in (caught.value.details() or "")


async def test_embed_bad_input(mesh: InProcessMesh) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await mesh.router_stub().Embed(generation_pb2.EmbedRequest(inputs=[]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_no_worker_is_unavailable_with_retry_after(mesh: InProcessMesh) -> None:
    await mesh.stop_worker(mesh.workers[0])
    await asyncio.sleep(0.1)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await mesh.router_stub().Generate(greedy("anyone?", cache=generation_pb2.CachePolicy(no_cache=True)))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "smollm2@1" in (caught.value.details() or "")
    assert dict(caught.value.trailing_metadata() or ())["retry-after"] == "1"


async def test_a_failure_before_the_first_token_is_retried_on_another_worker(
    mesh: InProcessMesh, redis_server: RedisServer
) -> None:
    await mesh.stop_worker(mesh.workers[0])
    broken = mesh_settings(
        redis_server.url,
        pools={
            "smollm2": {"engine": {"kind": "synthetic", "ttft_ms": 1, "fail_rate": 1.0}},
            "embed": {"engine": {"kind": "synthetic"}},
        },
    )
    await mesh.add_worker("smollm2", 7, settings=broken)
    await mesh.wait_for_workers(2)  # the broken one and the embed worker
    # Alone, the broken worker fails the request after the retry budget.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await mesh.router_stub().Generate(greedy("retry", cache=generation_pb2.CachePolicy(no_cache=True)))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    await mesh.add_worker("smollm2", 8)
    await mesh.wait_for_workers(3)
    for _ in range(4):
        answer = await mesh.router_stub().Generate(greedy("retry", cache=generation_pb2.CachePolicy(no_cache=True)))
        assert answer.route.worker_id == "smollm2-8"
        assert answer.route.attempts in (1, 2)


async def test_a_failure_after_the_first_token_reaches_the_client(
    mesh: InProcessMesh, redis_server: RedisServer
) -> None:
    await mesh.stop_worker(mesh.workers[0])
    flaky = mesh_settings(
        redis_server.url,
        pools={
            "smollm2": {"engine": {"kind": "synthetic", "ttft_ms": 1, "fail_after_tokens": 3}},
            "embed": {"engine": {"kind": "synthetic"}},
        },
    )
    await mesh.add_worker("smollm2", 5, settings=flaky)
    await mesh.wait_for_workers(2)
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for chunk in mesh.router_stub().GenerateStream(greedy("flaky", max_tokens=20)):
            received.append(chunk)
    assert len(received) == 3
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "after 3 tokens" in (caught.value.details() or "")


async def test_the_callers_deadline_bounds_the_whole_chain(mesh: InProcessMesh, redis_server: RedisServer) -> None:
    await mesh.stop_worker(mesh.workers[0])
    slow = mesh_settings(
        redis_server.url,
        pools={
            "smollm2": {"engine": {"kind": "synthetic", "ttft_ms": 2000}},
            "embed": {"engine": {"kind": "synthetic"}},
        },
    )
    await mesh.add_worker("smollm2", 3, settings=slow)
    await mesh.wait_for_workers(2)
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await mesh.router_stub().Generate(greedy("slow"), timeout=0.3)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 1.5
    engine = mesh.workers[-1].app.engine
    deadline = time.monotonic() + 2.0
    while (engine.stats().running or len(mesh.dispatcher.leases)) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    # The worker stopped the request too, and the lease came back.
    assert engine.stats().running == 0
    assert len(mesh.dispatcher.leases) == 0


async def test_a_silent_worker_is_dropped_after_three_seconds(mesh: InProcessMesh) -> None:
    stub = mesh.scheduler_stub()
    silence = asyncio.Event()

    async def one_report() -> AsyncIterator[scheduler_pb2.LoadReport]:
        yield scheduler_pb2.LoadReport(
            worker=scheduler_pb2.WorkerInfo(
                worker_id="ghost-0", endpoint="127.0.0.1:9", pool="smollm2", models=["smollm2@1"], engine="synthetic"
            ),
            load=scheduler_pb2.WorkerLoad(healthy=True, capacity=4),
        )
        await silence.wait()  # the stream stays open, the reports stop

    call = stub.ReportLoad(one_report())
    await call.read()
    listing = await stub.ListWorkers(scheduler_pb2.ListWorkersRequest())
    assert "ghost-0" in {w.info.worker_id for w in listing.workers}
    await asyncio.sleep(3.6)
    listing = await stub.ListWorkers(scheduler_pb2.ListWorkersRequest())
    assert "ghost-0" not in {w.info.worker_id for w in listing.workers}
    silence.set()
    call.cancel()


async def test_a_stopped_worker_leaves_the_registry_at_once(mesh: InProcessMesh) -> None:
    await mesh.stop_worker(mesh.workers[0])
    await asyncio.sleep(0.2)
    listing = await mesh.scheduler_stub().ListWorkers(scheduler_pb2.ListWorkersRequest(pool="smollm2"))
    assert list(listing.workers) == []


async def test_every_server_serves_health_and_reflection(mesh: InProcessMesh) -> None:
    targets = {
        mesh.router_address: "headrace.v1.Router",
        mesh.scheduler_address: "headrace.v1.Scheduler",
        mesh.cache_address: "headrace.v1.Cache",
        mesh.workers[0].address: "headrace.v1.Worker",
    }
    for address, service in targets.items():
        channel = mesh.channel(address)
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", service):
            status = await health.Check(health_pb2.HealthCheckRequest(service=name))
            assert status.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)

        async def ask() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
            yield reflection_pb2.ServerReflectionRequest(list_services="")

        async for answer in reflection.ServerReflectionInfo(ask()):
            names = {s.name for s in answer.list_services_response.service}
            assert {service, "grpc.health.v1.Health"} <= names


async def test_worker_rejects_a_model_it_does_not_serve(mesh: InProcessMesh) -> None:
    request = worker_pb2.WorkerGenerateRequest(request_id="r", model_version="other@1", request=greedy("x"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in mesh.worker_stub(0).Generate(request):
            pass
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "this worker serves" in (caught.value.details() or "")
