"""The semantic index's catch-up with Redis, against a store that answers
slowly (no Redis here)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import numpy as np

from services.cache.entry_store import IndexedVector
from services.cache.partition import Partition
from services.cache.semantic_index import SemanticIndex
from services.cache.vector_index import HnswParams

DIM = 4
ROUND_TRIP_S = 0.05
PARTITION = Partition("tenant", "m@1")


class SlowLog:
    """An entry log with one entry, each read one slow round trip."""

    def __init__(self) -> None:
        self.reads = 0

    async def log_since(self, partition: Partition, after_seq: int, limit: int = 500) -> list[tuple[str, int]]:
        self.reads += 1
        await asyncio.sleep(ROUND_TRIP_S)
        return [("e1", 1)] if after_seq < 1 else []

    async def vectors(self, partition: Partition, entry_ids: Sequence[str]) -> list[IndexedVector]:
        vector = np.array([1.0, 0.0, 0.0, 0.0], dtype=np.float32)
        return [IndexedVector(entry_id, partition, "scope", vector, time.time() + 60) for entry_id in entry_ids]


async def test_searches_of_one_partition_catch_up_side_by_side() -> None:
    store = SlowLog()
    index = SemanticIndex(store, dimension=DIM, flat_max=8, hnsw=HnswParams())  # type: ignore[arg-type]
    query = np.array([1.0, 0.0, 0.0, 0.0], dtype=np.float32)
    started = time.monotonic()
    results = await asyncio.gather(*(index.search(PARTITION, "scope", query, 1) for _ in range(20)))
    elapsed = time.monotonic() - started
    # Each search: its own read of the log, then one more once it has the
    # entry; all at once, not twenty round trips one after another.
    assert elapsed < 10 * ROUND_TRIP_S
    assert all([m.entry_id for m in matches] == ["e1"] for matches in results)
    assert len(index) == 1 and store.reads == 40
