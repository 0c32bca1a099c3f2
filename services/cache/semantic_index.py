"""This replica's semantic index: one PartitionIndex per partition, built
from Redis and kept in step with it.

Redis is the truth; this is a copy any replica can rebuild. At start every
partition is loaded (`rebuild`). Before each search the partition catches up
with what other replicas stored (the partition's log, read from the last
sequence number seen: one round trip, usually empty). Entries that expire or
are invalidated leave in the sweep; until then a hit is always checked
against Redis, so a stale copy can cost a miss but never serve an answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from services.cache import metrics
from services.cache.embedder import Vectors
from services.cache.entry_store import EntryStore, IndexedVector
from services.cache.partition import Partition
from services.cache.vector_index import HnswParams, Match, PartitionIndex

log = logging.getLogger(__name__)


@dataclass
class _Loaded:
    partition: Partition
    index: PartitionIndex
    last_seq: int = 0


class SemanticIndex:
    def __init__(self, store: EntryStore, *, dimension: int, flat_max: int, hnsw: HnswParams) -> None:
        self._store = store
        self._dimension = dimension
        self._flat_max = flat_max
        self._hnsw = hnsw
        self._partitions: dict[str, _Loaded] = {}

    def __len__(self) -> int:
        return sum(len(p.index) for p in self._partitions.values())

    def _loaded(self, partition: Partition) -> _Loaded:
        loaded = self._partitions.get(partition.id)
        if loaded is None:
            loaded = _Loaded(partition, PartitionIndex(self._dimension, flat_max=self._flat_max, hnsw=self._hnsw))
            self._partitions[partition.id] = loaded
        elif loaded.partition != partition:
            # Two partitions with one id would be a SHA-256 collision.
            raise RuntimeError("partition id collision")
        return loaded

    async def rebuild(self) -> int:
        """Load every partition in Redis; the number of entries loaded."""
        started = time.monotonic()
        for partition in await self._store.partitions():
            await self.catch_up(partition)
        metrics.INDEXED.set(len(self))
        log.info(
            "semantic index rebuilt from Redis: %d entries in %d partitions in %.2fs",
            len(self),
            len(self._partitions),
            time.monotonic() - started,
        )
        return len(self)

    async def catch_up(self, partition: Partition) -> None:
        """Add what was committed since the last sequence seen. Searches of
        one partition catch up side by side, not one after another: adding
        an entry twice is harmless, and the sequence only moves forward."""
        loaded = self._loaded(partition)
        while True:
            changes = await self._store.log_since(partition, loaded.last_seq)
            if not changes:
                return
            for vector in await self._store.vectors(partition, [entry_id for entry_id, _ in changes]):
                self._add(loaded, vector)
            loaded.last_seq = max(loaded.last_seq, changes[-1][1])

    def _add(self, loaded: _Loaded, item: IndexedVector) -> None:
        if item.partition != loaded.partition or item.vector.shape != (self._dimension,):
            return
        loaded.index.add(item.entry_id, item.scope, item.vector, item.expires_at)

    def add(self, partition: Partition, entry_id: str, scope: str, vector: Vectors, expires_at: float) -> None:
        """What this replica stored: searchable here at once, without waiting
        for the next catch-up (which then sees it again, harmlessly)."""
        self._add(self._loaded(partition), IndexedVector(entry_id, partition, scope, vector, expires_at))
        metrics.INDEXED.set(len(self))

    def remove(self, partition: Partition, entry_ids: list[str]) -> None:
        loaded = self._partitions.get(partition.id)
        if loaded is None:
            return
        for entry_id in entry_ids:
            loaded.index.remove(entry_id)
        metrics.INDEXED.set(len(self))

    async def search(self, partition: Partition, scope: str, vector: Vectors, k: int) -> list[Match]:
        await self.catch_up(partition)
        return self._loaded(partition).index.search(scope, vector, k, now=time.time())

    async def sweep(self) -> int:
        """Drop expired entries (here and from Redis's indexes) and entries
        another replica invalidated; the number dropped here."""
        dropped = 0
        now = time.time()
        for loaded in list(self._partitions.values()):
            pruned = await self._store.prune(loaded.partition)
            gone = set(pruned) | set(loaded.index.expired(now))
            live = await self._store.log_ids(loaded.partition)
            gone |= loaded.index.entry_ids() - live
            for entry_id in gone:
                if entry_id in loaded.index:
                    loaded.index.remove(entry_id)
                    dropped += 1
            if len(loaded.index) == 0 and not live:
                del self._partitions[loaded.partition.id]
        metrics.INDEXED.set(len(self))
        return dropped

    async def run_sweeper(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.sweep()
            except Exception:
                log.exception("semantic index sweep failed; trying again in %.0fs", interval_s)
