"""The real all-MiniLM-L6-v2 under concurrent callers: texts of mixed
lengths from many tasks at once, with token counting (`fits`) on the event
loop while batches run on the model's thread, as the cache service does.

This reproduced "Unable to create tensor ... padding" (INTERNAL on lookups)
before MiniLmEncoder counted tokens with a tokenizer of its own: the shared
Hugging Face tokenizer's padding was switched off by a count mid-batch."""

from __future__ import annotations

import asyncio
import random
import sys
from collections.abc import Iterator

import pytest

from services.cache.embedder import BatchingEmbedder, MiniLmEncoder

pytestmark = pytest.mark.slow


@pytest.fixture
def eager_thread_switches() -> Iterator[None]:
    # Switch threads often, so the event loop's counting and the model's
    # batches interleave as they do on a busy host.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(interval)


async def test_mixed_lengths_from_many_tasks_all_embed(minilm: MiniLmEncoder, eager_thread_switches: None) -> None:
    embedder = BatchingEmbedder(minilm, max_batch=8, max_wait_ms=1, max_pending=4096)
    rng = random.Random(7)
    texts = [" ".join(f"word{j}" for j in range(rng.randint(1, 40))) for _ in range(120)]
    stop = asyncio.Event()

    async def count_tokens() -> None:
        while not stop.is_set():
            minilm.fits(rng.choice(texts))
            await asyncio.sleep(0)

    async def one(text: str) -> None:
        assert minilm.fits(text)
        vector = await embedder.embed([text])
        assert vector.shape == (1, minilm.dimension)

    counters = [asyncio.create_task(count_tokens()) for _ in range(4)]
    try:
        results = await asyncio.gather(*(one(t) for t in texts), return_exceptions=True)
    finally:
        stop.set()
        await asyncio.gather(*counters)
        await embedder.close()
    failures = [r for r in results if isinstance(r, BaseException)]
    assert failures == [], f"{len(failures)} of {len(texts)} failed, first: {failures[:1]!r}"
    # Batched, not one by one.
    assert embedder.batches < len(texts)


def test_counting_tokens_agrees_with_the_model(minilm: MiniLmEncoder) -> None:
    assert minilm.fits("short")
    assert not minilm.fits("word " * 300)  # 300 tokens + 2 special > 256
    assert minilm.fits("word " * 250)
