"""The embedder's bounded queue, with a stand-in model that takes a set
time per batch (a mock is fine here: what is tested is the queue)."""

import asyncio
import threading

import numpy as np
import pytest

from services.cache.embedder import BatchCost, BatchingEmbedder, EmbedderBusy, EmbedderTimeout, Vectors


class SlowEncoder:
    model_id = "slow"
    dimension = 4

    def __init__(self, seconds_per_batch: float) -> None:
        self.seconds_per_batch = seconds_per_batch
        self.batches: list[list[str]] = []
        self.release = threading.Event()
        self.release.set()

    def fits(self, text: str) -> bool:
        return True

    def encode(self, texts: list[str]) -> Vectors:
        self.release.wait(5)
        self.batches.append(list(texts))
        threading.Event().wait(self.seconds_per_batch)
        return np.ones((len(texts), self.dimension), dtype=np.float32)


def test_the_batch_cost_is_fitted_as_overhead_plus_per_text() -> None:
    cost = BatchCost()
    assert cost.seconds(10) == 0.0  # nothing seen yet: let lookups through
    for _ in range(5):
        cost.observe(1, 0.011)
        cost.observe(21, 0.031)
    assert cost.seconds(1) == pytest.approx(0.011, rel=0.01)
    assert cost.seconds(41) == pytest.approx(0.051, rel=0.01)
    assert cost.seconds(0) == pytest.approx(0.010, rel=0.02)


async def test_a_saturated_model_turns_lookups_away_at_once() -> None:
    encoder = SlowEncoder(seconds_per_batch=0.05)
    embedder = BatchingEmbedder(encoder, max_batch=4, max_wait_ms=0, max_pending=1000)
    try:
        await embedder.embed(["warm up"])  # one batch seen: ~50 ms a batch
        encoder.release.clear()  # the model stalls; lookups pile up
        patient = [asyncio.create_task(embedder.embed([f"lookup {i}"], deadline_s=30)) for i in range(16)]
        await asyncio.sleep(0.01)
        # 16 texts ahead, 4 a batch, ~50 ms each: ~200 ms of work > 100 ms.
        assert embedder.expected_wait_s(1) > 0.1
        with pytest.raises(EmbedderBusy) as busy:
            await embedder.embed(["hurried lookup"], deadline_s=0.1)
        assert busy.value.reason == "embedder-busy" and "saturated" in str(busy.value)
        encoder.release.set()
        assert all(v.shape == (1, 4) for v in await asyncio.gather(*patient))
        assert "hurried lookup" not in [t for batch in encoder.batches for t in batch]
    finally:
        encoder.release.set()
        await embedder.close()


async def test_lookups_go_before_stores_and_stores_still_come_through() -> None:
    encoder = SlowEncoder(seconds_per_batch=0.0)
    embedder = BatchingEmbedder(encoder, max_batch=2, max_wait_ms=0, max_pending=1000)
    try:
        encoder.release.clear()
        first = asyncio.create_task(embedder.embed(["running"]))
        await asyncio.sleep(0.01)  # the model is busy with it
        stores = [asyncio.create_task(embedder.embed([f"store {i}"])) for i in range(4)]
        await asyncio.sleep(0)
        lookup = asyncio.create_task(embedder.embed(["lookup"], deadline_s=30))
        await asyncio.sleep(0.01)
        encoder.release.set()
        await asyncio.gather(first, lookup, *stores)
        order = [t for batch in encoder.batches for t in batch]
        assert order.index("lookup") < order.index("store 0")
        assert sorted(order) == sorted(["running", "lookup", *(f"store {i}" for i in range(4))])
    finally:
        encoder.release.set()
        await embedder.close()


async def test_a_lookup_past_its_deadline_times_out_and_leaves_the_batch() -> None:
    encoder = SlowEncoder(seconds_per_batch=0.0)
    embedder = BatchingEmbedder(encoder, max_batch=1, max_wait_ms=0, max_pending=1000)
    try:
        encoder.release.clear()  # no batch seen yet: the estimate lets it in
        blocker = asyncio.create_task(embedder.embed(["running"]))
        await asyncio.sleep(0.01)
        with pytest.raises(EmbedderTimeout) as late:
            await embedder.embed(["late lookup"], deadline_s=0.05)
        assert late.value.reason == "embedder-timeout"
        encoder.release.set()
        await blocker
        await embedder.embed(["next"])
        assert [t for batch in encoder.batches for t in batch] == ["running", "next"]
    finally:
        encoder.release.set()
        await embedder.close()


async def test_more_texts_than_the_queue_holds_are_refused() -> None:
    encoder = SlowEncoder(seconds_per_batch=0.0)
    embedder = BatchingEmbedder(encoder, max_batch=8, max_wait_ms=0, max_pending=3)
    try:
        with pytest.raises(EmbedderBusy, match="waiting"):
            await embedder.embed(["a", "b", "c", "d"])
        assert (await embedder.embed(["a", "b", "c"])).shape == (3, 4)
    finally:
        await embedder.close()


async def test_a_batch_is_lookups_or_stores_never_both() -> None:
    encoder = SlowEncoder(seconds_per_batch=0.0)
    embedder = BatchingEmbedder(encoder, max_batch=8, max_wait_ms=0, max_pending=1000)
    try:
        encoder.release.clear()
        first = asyncio.create_task(embedder.embed(["running"]))
        await asyncio.sleep(0.01)  # the model is busy with it
        stores = [asyncio.create_task(embedder.embed([f"store {i}"])) for i in range(10)]
        lookups = [asyncio.create_task(embedder.embed([f"lookup {i}"], deadline_s=30)) for i in range(3)]
        await asyncio.sleep(0.01)
        encoder.release.set()
        await asyncio.gather(first, *lookups, *stores)
        for batch in encoder.batches[1:]:
            kinds = {text.split()[0] for text in batch}
            assert len(kinds) == 1, batch
            # Stores go in small batches (max_batch // 4), so a lookup that
            # comes meanwhile waits for little.
            assert kinds != {"store"} or len(batch) <= 2, batch
        assert encoder.batches[1] == [f"lookup {i}" for i in range(3)]
    finally:
        encoder.release.set()
        await embedder.close()
