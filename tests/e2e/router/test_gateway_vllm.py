"""The gateway in front of real engines: vLLM on SmolLM2-135M-Instruct and
all-MiniLM-L6-v2, called with the official openai client. One mesh (one
vLLM engine) for the module. Greedy output of so small a model is fragile
across compiled and eager runs, so the checks hold for any output."""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import AsyncIterator
from pathlib import Path

import openai
import pytest
import pytest_asyncio
from openai.types.chat import ChatCompletionMessageParam

from headrace.local.redis_server import RedisServer
from headrace.models.store import default_models_dir, prepare_model
from headrace.runtime.config import Settings
from headrace.v1 import generation_pb2
from services.worker.engines.vllm_engine import VllmEngine
from tests.support.mesh import InProcessMesh, start_mesh

pytestmark = pytest.mark.slow


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def mesh(redis_server: RedisServer) -> AsyncIterator[InProcessMesh]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    models_dir = default_models_dir()
    prepare_model("smollm2", models_dir, progress=False)
    prepare_model("smollm2-w8a8", models_dir, progress=False)
    settings = Settings(
        redis_url=redis_server.url,
        models_dir=models_dir,
        pools={
            # Small: this machine is shared.
            "smollm2": {"engine": {"kind": "vllm", "max_model_len": 2048, "max_num_seqs": 8, "cpu_kv_cache_gib": 1}},
            # The int8 W8A8 variant as a version of the same model (examples/quantized.yaml);
            # eager: it starts in about half the time, and these tests decode little.
            "smollm2-q8": {
                "engine": {
                    "kind": "vllm",
                    "prepared_model": "smollm2-w8a8",
                    "max_model_len": 2048,
                    "max_num_seqs": 4,
                    "cpu_kv_cache_gib": 1,
                    "enforce_eager": True,
                }
            },
            "minilm": {"engine": {"kind": "embeddings"}},
        },
        models={
            "smollm2": {
                "default_version": "1",
                "versions": {
                    "1": {"pool": "smollm2", "context_length": 2048},
                    "q8": {"pool": "smollm2-q8", "context_length": 2048},
                },
            },
            "minilm": {"task": "embed", "default_version": "1", "versions": {"1": {"pool": "minilm"}}},
        },
        aliases={"smollm2-fast": "smollm2@q8", "chat": "smollm2"},
        routing={
            "routes": {
                "chat": {"policies": [{"kind": "fast_accurate", "fast": "smollm2-fast", "accurate": "smollm2@1"}]}
            }
        },
        default_embedding_model="minilm",
        worker={"metrics_port_offset": None},
    )
    running = await start_mesh(settings, http=True)
    yield running
    await running.close()


def client(mesh: InProcessMesh) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{mesh.http_url}/v1", api_key="unused", max_retries=0)


QUESTION: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "What does a mill's headrace do? Answer in one sentence."}
]


async def test_chat_whole_and_streamed_from_vllm(mesh: InProcessMesh) -> None:
    async with client(mesh) as api:
        raw = await api.chat.completions.with_raw_response.create(
            model="smollm2", messages=QUESTION, max_tokens=24, temperature=0
        )
        stream = await api.chat.completions.create(
            model="smollm2",
            messages=QUESTION,
            max_tokens=24,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"cache-control": "no-cache"},
        )
        chunks = [chunk async for chunk in stream]
    whole = raw.parse()
    assert whole.model == "smollm2@1" and raw.headers["x-headrace-model"] == "smollm2@1"
    assert whole.choices[0].message.content and whole.choices[0].finish_reason in ("stop", "length")
    assert whole.usage is not None and whole.usage.prompt_tokens > 10 and 1 <= whole.usage.completion_tokens <= 24
    content = [c for c in chunks if c.choices]
    assert content[0].choices[0].delta.role == "assistant"
    assert content[-1].choices[0].finish_reason in ("stop", "length")
    assert "".join(c.choices[0].delta.content or "" for c in content).strip()
    usage = chunks[-1].usage
    assert usage is not None and 1 <= usage.completion_tokens <= 24 and usage.prompt_tokens == whole.usage.prompt_tokens


async def test_a_client_that_leaves_mid_stream_frees_the_vllm_sequence(mesh: InProcessMesh) -> None:
    engine = mesh.workers[0].app.engine
    async with client(mesh) as api:
        stream = await api.chat.completions.create(
            model="smollm2",
            messages=QUESTION,
            max_tokens=1500,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        async for _chunk in stream:
            break
        assert engine.stats().running == 1
        await stream.close()
    for _ in range(200):
        if engine.stats().running == 0:
            break
        await asyncio.sleep(0.05)
    assert engine.stats().running == 0


async def test_the_int8_version_is_served_by_version_alias_and_policy(mesh: InProcessMesh) -> None:
    int8 = mesh.workers[1].app.engine
    assert isinstance(int8, VllmEngine) and Path(int8.model).name == "smollm2-w8a8"
    asked: list[tuple[str, list[ChatCompletionMessageParam], str]] = [
        ("smollm2@q8", QUESTION, "smollm2@q8"),
        ("smollm2-fast", QUESTION, "smollm2@q8"),
        ("smollm2", QUESTION, "smollm2@1"),
        # The fast-vs-accurate policy: an easy question to int8, a hard one to bf16.
        ("chat", [{"role": "user", "content": "What is the capital of France?"}], "smollm2@q8"),
        ("chat", [{"role": "user", "content": "Explain why the sky is blue, step by step."}], "smollm2@1"),
    ]
    async with client(mesh) as api:
        for model, messages, served in asked:
            raw = await api.chat.completions.with_raw_response.create(
                model=model,
                messages=messages,
                max_tokens=8,
                temperature=0,
                extra_headers={"cache-control": "no-cache"},
            )
            answer = raw.parse()
            assert raw.headers["x-headrace-model"] == served, (model, raw.headers)
            assert answer.model == served and answer.choices[0].message.content
            assert answer.usage is not None and 1 <= answer.usage.completion_tokens <= 8
    # Over gRPC: which worker generated it, by version.
    for model, worker in (("smollm2@q8", "smollm2-q8-0"), ("smollm2@1", "smollm2-0")):
        reply = await mesh.router_stub().Generate(
            generation_pb2.GenerateRequest(
                model=model,
                prompt="A water wheel turns because",
                sampling=generation_pb2.SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True),
                cache=generation_pb2.CachePolicy(no_cache=True),
            )
        )
        assert reply.model == model and reply.route.worker_id == worker
        assert reply.usage.completion_tokens == 6 and len(reply.token_ids) == 6


async def test_embeddings_from_minilm(mesh: InProcessMesh) -> None:
    async with client(mesh) as api:
        result = await api.embeddings.create(model="minilm", input=["a mill race", "a water wheel"])
    assert [d.index for d in result.data] == [0, 1] and result.model == "minilm@1"
    vector = result.data[0].embedding
    assert len(vector) == 384 and math.isclose(math.sqrt(sum(v * v for v in vector)), 1.0, rel_tol=1e-3)
