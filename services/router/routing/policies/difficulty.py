"""How hard a request looks, from 0 (easy) to 1 (hard): a weighted mean of
its length, task markers (e.g. "step by step", "prove", code fences) and,
when configured, a nearest-centroid embedding classifier over example
requests. Cheap by design: it runs before every routed request."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import Protocol

from headrace.runtime.routing_settings import EmbeddingScorerSettings, ScorerSettings
from services.router.routing.decision import RoutingRequest

# The embedding model reads ~256 tokens; more text only costs time.
_EMBED_CHARS = 2000


class TextEncoder(Protocol):
    """Sentence embeddings; blocking (the scorer runs it in a thread)."""

    def encode(self, texts: Sequence[str]) -> list[list[float]]: ...


class CentroidClassifier:
    """Scores a text by how much closer it is to the hard examples' centroid
    than to the easy ones': sigmoid((cos_hard - cos_easy) / scale)."""

    def __init__(self, encoder: TextEncoder, settings: EmbeddingScorerSettings) -> None:
        self._encoder = encoder
        self._settings = settings
        self._centroids: tuple[list[float], list[float]] | None = None
        self._lock = asyncio.Lock()

    async def score(self, text: str) -> float:
        easy, hard = await self._ensure_centroids()
        [vector] = await asyncio.to_thread(self._encoder.encode, [text[:_EMBED_CHARS]])
        margin = _cosine(vector, hard) - _cosine(vector, easy)
        return 1.0 / (1.0 + math.exp(-margin / self._settings.scale))

    async def _ensure_centroids(self) -> tuple[list[float], list[float]]:
        async with self._lock:
            if self._centroids is None:
                easy = await asyncio.to_thread(self._encoder.encode, self._settings.easy_examples)
                hard = await asyncio.to_thread(self._encoder.encode, self._settings.hard_examples)
                self._centroids = (_mean(easy), _mean(hard))
            return self._centroids


class DifficultyScorer:
    def __init__(self, settings: ScorerSettings, classifier: CentroidClassifier | None = None) -> None:
        if settings.embedding_weight > 0 and classifier is None:
            raise ValueError("an embedding_weight needs a classifier")
        self._settings = settings
        self._classifier = classifier

    async def score(self, request: RoutingRequest) -> float:
        return (await self.signals(request))["score"]

    async def signals(self, request: RoutingRequest) -> dict[str, float]:
        s = self._settings
        length = min(1.0, request.prompt_tokens_estimate / s.long_prompt_tokens)
        if request.max_tokens >= s.long_completion_tokens:
            length = 1.0
        lowered = request.text.lower()
        hits = sum(1 for marker in s.markers if marker in lowered)
        markers = min(1.0, hits / s.markers_to_saturate)
        weighted = s.length_weight * length + s.marker_weight * markers
        total_weight = s.length_weight + s.marker_weight
        signals = {"length": length, "markers": markers}
        if self._classifier is not None and s.embedding_weight > 0:
            embedding = await self._classifier.score(request.text)
            signals["embedding"] = embedding
            weighted += s.embedding_weight * embedding
            total_weight += s.embedding_weight
        signals["score"] = weighted / total_weight
        return signals


def _mean(vectors: Sequence[Sequence[float]]) -> list[float]:
    return [sum(column) / len(vectors) for column in zip(*vectors, strict=True)]


def _cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else 0.0
