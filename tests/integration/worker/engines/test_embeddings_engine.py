"""The embeddings engine on the real all-MiniLM-L6-v2."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from headrace.runtime.engine_settings import EmbeddingsEngineSettings
from headrace.runtime.errors import Unimplemented
from services.worker.engines.base import Engine, GenerationRequest
from services.worker.engines.embeddings import EmbeddingsEngine

pytestmark = pytest.mark.slow


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def embeddings_engine() -> AsyncIterator[EmbeddingsEngine]:
    engine = EmbeddingsEngine(EmbeddingsEngineSettings(max_batch_size=32, max_queue_delay_ms=20))
    await engine.start()
    yield engine
    await engine.close()


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / (math.hypot(*a) * math.hypot(*b))


async def test_vectors_have_384_dimensions_and_unit_length(embeddings_engine: EmbeddingsEngine) -> None:
    assert isinstance(embeddings_engine, Engine)
    vectors = await embeddings_engine.embed(["The mill wheel turns.", "Water runs down the headrace."])
    assert len(vectors) == 2
    for vector in vectors:
        assert len(vector) == 384 == embeddings_engine.dimensions
        assert math.hypot(*vector) == pytest.approx(1.0, abs=1e-4)
    assert vectors[0] != vectors[1]


async def test_similar_sentences_are_closer_than_unrelated_ones(embeddings_engine: EmbeddingsEngine) -> None:
    guitar, plays, market = await embeddings_engine.embed(
        ["A man is playing a guitar.", "Someone plays the guitar on stage.", "The stock market fell sharply today."]
    )
    assert cosine(guitar, plays) > 0.5
    assert cosine(guitar, plays) > cosine(guitar, market) + 0.3
    assert cosine(plays, market) < 0.3


async def test_concurrent_calls_are_batched_and_keep_their_results(embeddings_engine: EmbeddingsEngine) -> None:
    texts = [f"sentence number {i} about rivers, mills and water wheels" for i in range(24)]
    alone = [(await embeddings_engine.embed([text]))[0] for text in texts[:3]]
    before = embeddings_engine.batcher_stats()
    results = await asyncio.gather(*(embeddings_engine.embed([text]) for text in texts))
    after = embeddings_engine.batcher_stats()
    calls, batches = after.calls - before.calls, after.batches - before.batches
    assert calls == 24
    assert batches < calls
    # Each caller gets its own text's vector back, whatever batch it rode in.
    for vector, expected in zip(results[:3], alone, strict=True):
        assert cosine(vector[0], expected) > 0.9999
    assert len({tuple(r[0][:4]) for r in results}) == 24


async def test_a_call_with_many_texts_keeps_their_order(embeddings_engine: EmbeddingsEngine) -> None:
    texts = [f"text {i}: " + "word " * (i % 7) for i in range(70)]  # more than one batch of 32
    vectors = await embeddings_engine.embed(texts)
    singles = await embeddings_engine.embed([texts[0], texts[69]])
    assert cosine(vectors[0], singles[0]) > 0.9999
    assert cosine(vectors[69], singles[1]) > 0.9999


async def test_generate_is_unimplemented_with_a_clear_message(embeddings_engine: EmbeddingsEngine) -> None:
    stream = embeddings_engine.generate(GenerationRequest(request_id="g", model="minilm@1", prompt="hi"))
    with pytest.raises(Unimplemented, match="cannot generate text"):
        await stream.__anext__()
    assert await embeddings_engine.abort("g") is False


async def test_stats_and_health(embeddings_engine: EmbeddingsEngine) -> None:
    await embeddings_engine.embed(["warm"])
    stats = embeddings_engine.stats()
    # A batch running and the next one filling.
    assert stats.capacity == 64
    assert stats.running == 0 and stats.waiting == 0
    assert stats.tokens_per_second > 0
    assert await embeddings_engine.health()


async def test_bfloat16_vectors_are_unit_length_close_to_float32s_and_batch_independent() -> None:
    texts = [
        "The mill wheel turns.",
        "Is it legal to record a phone call?",
        "A man is playing a guitar.",
        "How do I convert Celsius to Fahrenheit, and why does the formula multiply by nine fifths?",
    ]
    by_dtype: dict[str, list[list[float]]] = {}
    for dtype in ("float32", "bfloat16"):
        engine = EmbeddingsEngine(EmbeddingsEngineSettings(dtype=dtype, max_queue_delay_ms=20))  # type: ignore[arg-type]
        await engine.start()
        try:
            assert engine.dtype == dtype
            alone = [(await engine.embed([text]))[0] for text in texts]
            # Side by side, the texts ride in one padded batch.
            before = engine.batcher_stats().batches
            together = [r[0] for r in await asyncio.gather(*(engine.embed([text]) for text in texts))]
            assert engine.batcher_stats().batches - before < len(texts)
            for one, batched in zip(alone, together, strict=True):
                assert cosine(one, batched) > 0.999
            by_dtype[dtype] = together
        finally:
            await engine.close()
    for full, half in zip(by_dtype["float32"], by_dtype["bfloat16"], strict=True):
        # Normalized in float32 after the bf16 model: unit length as exactly as float32's.
        assert math.hypot(*half) == pytest.approx(1.0, abs=1e-5)
        assert 0.99 < cosine(full, half) < 1.0 + 1e-6
    # Still tells texts apart as float32 does.
    assert cosine(by_dtype["bfloat16"][0], by_dtype["bfloat16"][1]) < 0.5
