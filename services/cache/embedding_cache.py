"""Embeddings kept in Redis, so the same text is embedded once: a lookup
that misses embeds the user turn, and the store that follows finds it here.
Keyed per tenant and model (see partition.embedding_key)."""

from __future__ import annotations

from typing import Protocol, cast

import numpy as np
import redis.asyncio as redis

from services.cache import metrics
from services.cache.embedder import Vectors
from services.cache.partition import embedding_key


class Embedder(Protocol):
    async def embed(self, texts: list[str], *, deadline_s: float | None = None) -> Vectors: ...


class EmbeddingCache:
    def __init__(self, client: redis.Redis, embedder: Embedder, *, model_id: str, dimension: int, ttl_s: int) -> None:
        self._redis = client
        self._embedder = embedder
        self._model_id = model_id
        self._dimension = dimension
        self._ttl_s = ttl_s

    async def embed(self, tenant: str, texts: list[str], *, deadline_s: float | None = None) -> Vectors:
        """`deadline_s`: how long the model may take (a lookup's budget);
        past it, or when it could not make it, EmbedderBusy."""
        keys = [embedding_key(tenant, self._model_id, text) for text in texts]
        stored = cast(list[bytes | None], await self._redis.mget(keys))
        result = np.zeros((len(texts), self._dimension), dtype=np.float32)
        missing: list[int] = []
        for index, raw in enumerate(stored):
            if raw is not None and len(raw) == self._dimension * 4:
                result[index] = np.frombuffer(raw, dtype=np.float32)
            else:
                missing.append(index)
        metrics.EMBEDDINGS.labels(source="redis").inc(len(texts) - len(missing))
        if missing:
            fresh = await self._embedder.embed([texts[i] for i in missing], deadline_s=deadline_s)
            metrics.EMBEDDINGS.labels(source="model").inc(len(missing))
            async with self._redis.pipeline(transaction=False) as pipe:
                for row, index in enumerate(missing):
                    result[index] = fresh[row]
                    pipe.set(keys[index], fresh[row].astype(np.float32).tobytes(), ex=self._ttl_s)
                await pipe.execute()
        return result
