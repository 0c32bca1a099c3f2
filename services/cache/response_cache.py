"""The cache's domain: exact and semantic lookup, store and invalidation.
No gRPC here: server.py translates.

A lookup tries the exact key first (tenant, model version, the whole
normalized request), then, when the request allows it, the semantic index
of its partition and context (semantic_key). Either way the entry found is
read back from Redis and checked again (partition, context, age) before it
is served.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from enum import Enum

from headrace.request_rules.cache_policy import bypass_reason, no_store_reason
from headrace.runtime.config import CacheSettings
from headrace.v1 import generation_pb2
from services.cache import metrics
from services.cache.embedder import EmbedderBusy, TextEncoder, Vectors
from services.cache.embedding_cache import EmbeddingCache
from services.cache.entry_store import EntryStore, InvalidateCriteria, StoredEntry
from services.cache.partition import Partition
from services.cache.request_key import exact_key
from services.cache.semantic_index import SemanticIndex
from services.cache.semantic_key import SemanticKey, semantic_key, semantic_requested
from services.cache.semantic_serving import SemanticServing
from services.cache.verifier import HitVerifier, Verdict

log = logging.getLogger(__name__)

# How much earlier than measured a request is taken to have started, for
# invalidation watermarks: transit time and clock differences between
# cache replicas.
_START_MARGIN_S = 1.0
# Time kept, out of a lookup's deadline, for what follows the embedding.
_AFTER_EMBEDDING_S = 0.01


class Outcome(Enum):
    BYPASS = "bypass"
    MISS = "miss"
    HIT_EXACT = "hit-exact"
    HIT_SEMANTIC = "hit-semantic"


@dataclass(frozen=True)
class LookupResult:
    outcome: Outcome
    entry: StoredEntry | None = None
    similarity: float = 0.0
    # Best similarity seen by a semantic lookup, hit or not.
    best_similarity: float = 0.0
    reason: str = ""
    # A semantic lookup's verifier and its verdict on the hit, or on the
    # first candidate it turned down ("accept", "reject:negation", ...).
    verifier: str = ""
    verdict: str = ""
    verdict_detail: str = ""


@dataclass(frozen=True)
class StoreResult:
    stored: bool
    entry_id: str = ""
    reason: str = ""
    semantic: bool = False


@dataclass
class SemanticParts:
    """What the semantic cache needs besides Redis."""

    encoder: TextEncoder
    embeddings: EmbeddingCache
    index: SemanticIndex
    verifier: HitVerifier
    serving: SemanticServing


class ResponseCache:
    def __init__(self, store: EntryStore, settings: CacheSettings, semantic: SemanticParts | None = None) -> None:
        self._store = store
        self._settings = settings
        self._semantic = semantic

    async def lookup(
        self, partition: Partition, request: generation_pb2.GenerateRequest, *, deadline_s: float | None = None
    ) -> LookupResult:
        """`deadline_s`: the time left to answer; the embedding gets at most
        what remains of it (and of lookup_embed_budget_ms)."""
        deadline_at = None if deadline_s is None else time.monotonic() + deadline_s
        bypass = bypass_reason(request)
        if bypass is not None:
            return LookupResult(Outcome.BYPASS, reason=bypass)
        max_age = request.cache.max_age_s if request.cache.HasField("max_age_s") else None
        now = time.time()
        entry = await self._store.get(exact_key(partition.tenant, partition.model_version, request), partition, now=now)
        if entry is not None and (max_age is None or entry.age_s(now) <= max_age):
            return LookupResult(Outcome.HIT_EXACT, entry=entry, similarity=1.0, best_similarity=1.0)
        key, reason = self._semantic_key(partition, request)
        if key is None or self._semantic is None:
            metrics.SEMANTIC_SKIPPED.labels(reason=reason).inc()
            return LookupResult(Outcome.MISS, reason=reason)
        budget_s = self._settings.semantic.lookup_embed_budget_ms / 1000.0
        if deadline_at is not None:
            # Leave a little for the search and the read-back after it.
            budget_s = min(budget_s, deadline_at - time.monotonic() - _AFTER_EMBEDDING_S)
        try:
            vector = (await self._semantic.embeddings.embed(partition.tenant, [key.text], deadline_s=budget_s))[0]
        except EmbedderBusy as exc:
            metrics.SEMANTIC_SKIPPED.labels(reason=exc.reason).inc()
            return LookupResult(Outcome.MISS, reason=exc.reason)
        return await self._semantic_lookup(partition, key, vector, max_age)

    async def _semantic_lookup(
        self, partition: Partition, key: SemanticKey, vector: Vectors, max_age: int | None
    ) -> LookupResult:
        assert self._semantic is not None
        threshold = self._settings.semantic.similarity_threshold
        matches = await self._semantic.index.search(partition, key.scope, vector, self._settings.semantic.candidates)
        best = matches[0].similarity if matches else 0.0
        verifier = self._semantic.verifier
        turned_down: Verdict | None = None
        above = [match for match in matches if match.similarity >= threshold]
        # The verifier judges every candidate on its text (one round trip)
        # before any entry, answer and all, is read.
        texts = await self._store.texts([match.entry_id for match in above])
        for match, text in zip(above, texts, strict=True):
            if text is None:
                # Expired or invalidated elsewhere: this copy is stale.
                self._semantic.index.remove(partition, [match.entry_id])
                continue
            # A rewording is accepted only from a higher similarity.
            verdict = verifier.verify(key.text, text).at(match.similarity)
            metrics.VERDICTS.labels(verdict=verdict.label).inc()
            if not verdict.accepted:
                turned_down = turned_down or verdict
                continue
            now = time.time()
            entry = await self._store.get(match.entry_id, partition, now=now)
            if entry is None:
                self._semantic.index.remove(partition, [match.entry_id])
                continue
            if entry.scope != key.scope or (max_age is not None and entry.age_s(now) > max_age):
                continue
            metrics.SEMANTIC_SIMILARITY.labels(result="hit").observe(match.similarity)
            return LookupResult(
                Outcome.HIT_SEMANTIC,
                entry=entry,
                similarity=match.similarity,
                best_similarity=best,
                verifier=verifier.name,
                verdict=verdict.label,
            )
        if matches:
            metrics.SEMANTIC_SIMILARITY.labels(result="miss").observe(best)
        if turned_down is not None:
            return LookupResult(
                Outcome.MISS,
                best_similarity=best,
                reason="verifier",
                verifier=verifier.name,
                verdict=turned_down.label,
                verdict_detail=turned_down.detail,
            )
        return LookupResult(Outcome.MISS, best_similarity=best)

    def _semantic_key(
        self, partition: Partition, request: generation_pb2.GenerateRequest
    ) -> tuple[SemanticKey | None, str]:
        """The semantic key, or None and why the semantic cache sits out."""
        if self._semantic is None:
            return None, "disabled"
        if not semantic_requested(request.cache, self._settings.semantic.default_on):
            return None, "not-requested"
        if not self._semantic.serving.serves(partition):
            # Off by default where the calibration does not vouch for it.
            return None, "semantic-off"
        key = semantic_key(partition, request)
        if key is None:
            return None, "no-user-turn-last"
        if not self._semantic.encoder.fits(key.text):
            # The model would truncate it: texts differing past the cut
            # would embed the same.
            return None, "too-long-to-embed"
        return key, ""

    async def store(
        self,
        partition: Partition,
        request: generation_pb2.GenerateRequest,
        response: generation_pb2.GenerateResponse,
        *,
        answer: bytes,
        request_age_s: float,
    ) -> StoreResult:
        reason = no_store_reason(request, response)
        if reason is not None:
            metrics.STORES_REFUSED.labels(reason=reason).inc()
            return StoreResult(False, reason=reason)
        policy = request.cache
        ttl = policy.ttl_s if policy.HasField("ttl_s") and policy.ttl_s > 0 else self._settings.default_ttl_s
        ttl = min(ttl, self._settings.max_ttl_s)
        entry_id = exact_key(partition.tenant, partition.model_version, request)
        key, _ = self._semantic_key(partition, request)
        vector: Vectors | None = None
        if key is not None and self._semantic is not None:
            try:
                vector = (await self._semantic.embeddings.embed(partition.tenant, [key.text]))[0]
            except EmbedderBusy as exc:
                metrics.SEMANTIC_SKIPPED.labels(reason=exc.reason).inc()
        # A vector means a key and the semantic parts: a semantic entry.
        scope = key.scope if key is not None and vector is not None else ""
        stored = await self._store.put(
            entry_id,
            partition,
            answer=answer,
            ttl_s=ttl,
            tags=list(request.tags),
            request_started_at=time.time() - max(0.0, request_age_s) - _START_MARGIN_S,
            max_entries=self._settings.semantic.max_entries_per_partition,
            scope=scope,
            vector=vector,
            text=key.text if key is not None and vector is not None else "",
        )
        if not stored:
            metrics.STORES_REFUSED.labels(reason="invalidated").inc()
            return StoreResult(False, entry_id=entry_id, reason="invalidated")
        metrics.STORES.inc()
        if vector is not None and self._semantic is not None:
            self._semantic.index.add(partition, entry_id, scope, vector, time.time() + ttl)
        return StoreResult(True, entry_id=entry_id, semantic=vector is not None)

    async def invalidate(self, criteria: InvalidateCriteria) -> int:
        removed = await self._store.invalidate(criteria)
        if self._semantic is not None:
            by_partition: dict[Partition, list[str]] = {}
            for partition, entry_id in removed:
                by_partition.setdefault(partition, []).append(entry_id)
            for partition, entry_ids in by_partition.items():
                self._semantic.index.remove(partition, entry_ids)
        metrics.INVALIDATED.inc(len(removed))
        return len(removed)
