"""The cache service over real gRPC, on a real Redis, with the real
all-MiniLM-L6-v2 (loaded once per session)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import grpc.aio
import pytest

from headrace.local.redis_server import RedisServer
from headrace.v1 import cache_pb2, generation_pb2
from services.cache.embedder import MiniLmEncoder
from services.cache.partition import PREFIX
from services.cache.server import MAX_LOOKUPS_PER_CALL, MAX_STORES_PER_CALL
from services.router.cache_lookups import CacheLookups
from services.router.cache_stores import CacheStores, PendingStore
from tests.integration.cache.support import RunningCache, answer, ask, cache_redis_url, lookup, start_cache, store
from tests.support.encoders import CountingEncoder

pytestmark = pytest.mark.slow

T, V = "acme", "smollm2@1"
HIT_EXACT = generation_pb2.CACHE_OUTCOME_HIT_EXACT
HIT_SEMANTIC = generation_pb2.CACHE_OUTCOME_HIT_SEMANTIC
MISS = generation_pb2.CACHE_OUTCOME_MISS
BYPASS = generation_pb2.CACHE_OUTCOME_BYPASS


@pytest.fixture
def encoder(minilm: MiniLmEncoder) -> CountingEncoder:
    return CountingEncoder(minilm)


@pytest.fixture
async def redis_url(redis_server: RedisServer) -> str:
    url = cache_redis_url(redis_server.url)
    cache = await start_cache(url, None)
    await cache.redis.flushdb()
    await cache.close()
    return url


@pytest.fixture
async def cache(redis_url: str, encoder: CountingEncoder) -> AsyncIterator[RunningCache]:
    running = await start_cache(redis_url, encoder)
    yield running
    await running.close()


async def test_exact_hits_follow_the_request_policy(cache: RunningCache) -> None:
    stored = await store(cache, T, V, ask("Name a river."), "The Nile.")
    assert stored.stored and len(stored.entry_id) == 64
    hit = await lookup(cache, T, V, ask("Name a river."))
    assert hit.outcome == HIT_EXACT and hit.similarity == 1.0 and hit.entry_id == stored.entry_id
    assert hit.response.text == "The Nile." and [d.text for d in hit.deltas] == ["The Nile."]
    assert (await lookup(cache, T, V, ask("Name a river.", no_cache=True))).outcome == BYPASS
    assert (await lookup(cache, T, V, ask("Name a river.", max_age_s=0))).outcome == MISS
    sampled = ask("Name a river.")
    sampled.sampling.ClearField("temperature")
    assert (await lookup(cache, T, V, sampled)).outcome == BYPASS
    refused = await store(cache, T, V, ask("Name a lake.", no_store=True), "Baikal.")
    assert not refused.stored and refused.reason == "no-store"
    # A sampled request opted in is cached like any other.
    opted = ask("Pick a colour.", allow_nondeterministic=True)
    opted.sampling.temperature = 0.9
    assert (await store(cache, T, V, opted, "Blue.")).stored
    assert (await lookup(cache, T, V, opted)).outcome == HIT_EXACT


async def test_a_paraphrase_hits_semantically_with_similarity_and_entry_id(cache: RunningCache) -> None:
    stored = await store(cache, T, V, ask("How do I reset my password?"), "Use the reset link.")
    assert stored.semantic
    hit = await lookup(cache, T, V, ask("How can I reset my password?"))
    assert hit.outcome == HIT_SEMANTIC
    assert hit.entry_id == stored.entry_id
    assert 0.8 <= hit.similarity < 1.0
    assert hit.verdict == "lexical:accept"
    assert hit.response.text == "Use the reset link."
    # Something else entirely is a miss.
    assert (await lookup(cache, T, V, ask("How do I delete my account?"))).outcome == MISS
    # ... and so is the paraphrase when the request opts out of semantic matching.
    assert (await lookup(cache, T, V, ask("How can I reset my password?", semantic=False))).outcome == MISS


async def test_the_context_must_match_exactly(cache: RunningCache) -> None:
    await store(cache, T, V, ask("How do I reset my password?", system="You are Acme's helpdesk."), "Acme: link.")
    same_context = ask("How can I reset my password?", system="You are Acme's helpdesk.")
    assert (await lookup(cache, T, V, same_context)).outcome == HIT_SEMANTIC
    for other in (
        ask("How can I reset my password?", system="You are Globex's helpdesk."),
        ask("How can I reset my password?"),
    ):
        assert (await lookup(cache, T, V, other)).outcome == MISS
    longer = ask("How can I reset my password?", system="You are Acme's helpdesk.")
    longer.sampling.max_tokens = 64
    assert (await lookup(cache, T, V, longer)).outcome == MISS
    # A conversation with earlier turns is another context.
    turns = ask("How can I reset my password?", system="You are Acme's helpdesk.")
    turns.messages.insert(1, generation_pb2.ChatMessage(role="user", content="Hi"))
    turns.messages.insert(2, generation_pb2.ChatMessage(role="assistant", content="Hello"))
    assert (await lookup(cache, T, V, turns)).outcome == MISS


async def test_text_the_model_would_truncate_is_cached_exactly_only(cache: RunningCache) -> None:
    long_text = "Please summarize the following report. " + "The quarterly numbers were fine. " * 80
    stored = await store(cache, T, V, ask(long_text), "Fine.")
    assert stored.stored and not stored.semantic
    # Differs only past the model's 256 tokens: would embed identically.
    changed = long_text + " Except for the fraud."
    assert (await lookup(cache, T, V, ask(changed))).outcome == MISS
    assert (await lookup(cache, T, V, ask(long_text))).outcome == HIT_EXACT


async def test_the_same_text_is_embedded_once(cache: RunningCache, encoder: CountingEncoder) -> None:
    request = ask("Explain how photosynthesis works.")
    assert (await lookup(cache, T, V, request)).outcome == MISS
    await store(cache, T, V, request, "Light to sugar.")
    assert (await lookup(cache, T, V, ask("Can you explain how photosynthesis works?"))).outcome == HIT_SEMANTIC
    assert (await lookup(cache, T, V, ask("Can you explain how photosynthesis works?"))).outcome == HIT_SEMANTIC
    assert encoder.texts == ["Explain how photosynthesis works.", "Can you explain how photosynthesis works?"]
    # Per tenant: another tenant's text is embedded anew (no timing side channel).
    await lookup(cache, "globex", V, ask("Explain how photosynthesis works."))
    assert encoder.texts[-1] == "Explain how photosynthesis works." and len(encoder.texts) == 3


async def test_concurrent_lookups_are_embedded_in_batches(cache: RunningCache) -> None:
    assert cache.app.semantic is not None
    questions = [f"What is a good name for a pet number {i}?" for i in range(12)]
    results = await asyncio.gather(*(lookup(cache, T, V, ask(q)) for q in questions))
    assert all(r.outcome == MISS for r in results)
    batches = cache.app.semantic.embeddings._embedder.batches  # type: ignore[attr-defined]
    assert batches < len(questions)


async def test_entries_expire_with_their_ttl_and_leave_every_index(cache: RunningCache) -> None:
    await store(cache, T, V, ask("How do I reset my password?", ttl_s=1, tags=("doc-9",)), "Link.")
    assert (await lookup(cache, T, V, ask("How can I reset my password?"))).outcome == HIT_SEMANTIC
    await asyncio.sleep(1.2)
    assert (await lookup(cache, T, V, ask("How do I reset my password?"))).outcome == MISS
    assert (await lookup(cache, T, V, ask("How can I reset my password?"))).outcome == MISS
    assert cache.app.semantic is not None
    await cache.app.semantic.index.sweep()
    assert len(cache.app.semantic.index) == 0
    # No index in Redis still lists it.
    for pattern in (f"{PREFIX}:part:*", f"{PREFIX}:tag:*"):
        for key in await cache.redis.keys(pattern):
            if await cache.redis.type(key) == b"zset":
                assert await cache.redis.zcount(key, "-inf", "+inf") == 0, key
    removed = await cache.stub.Invalidate(cache_pb2.InvalidateRequest(tenant=T, tags=["doc-9"]))
    assert removed.removed == 0


async def fill(cache: RunningCache) -> dict[str, str]:
    """One entry per (tenant, version, tag) combination; their ids by name."""
    ids = {}
    for name, tenant, version, tags in (
        ("a1-doc1", "a", "m@1", ("doc-1",)),
        ("a1-doc2", "a", "m@1", ("doc-2",)),
        ("a2-doc1", "a", "m@2", ("doc-1",)),
        ("a-other", "a", "other@1", ("doc-1",)),
        ("b1-doc1", "b", "m@1", ("doc-1",)),
    ):
        reply = await store(cache, tenant, version, ask(f"Question about {name}", tags=tags), f"answer {name}")
        assert reply.stored
        ids[name] = reply.entry_id
    return ids


async def surviving(cache: RunningCache, ids: dict[str, str]) -> set[str]:
    alive = set()
    for name in ids:
        tenant, version = {"a1": ("a", "m@1"), "a2": ("a", "m@2"), "a-": ("a", "other@1"), "b1": ("b", "m@1")}[name[:2]]
        reply = await lookup(cache, tenant, version, ask(f"Question about {name}"))
        if reply.outcome == HIT_EXACT:
            alive.add(name)
    return alive


@pytest.mark.parametrize(
    ("criteria", "dropped"),
    [
        ({"tags": ["doc-1"]}, {"a1-doc1", "a2-doc1", "a-other"}),
        ({"tags": ["doc-1"], "model_version": "m@1"}, {"a1-doc1"}),
        ({"model": "m"}, {"a1-doc1", "a1-doc2", "a2-doc1"}),
        ({"model_version": "m@2"}, {"a2-doc1"}),
        ({}, {"a1-doc1", "a1-doc2", "a2-doc1", "a-other"}),
        ({"entry_ids": ["a1-doc2", "b1-doc1"]}, {"a1-doc2"}),
    ],
    ids=["tag", "tag-and-version", "model", "version", "tenant", "entry-id"],
)
async def test_invalidate_by_each_dimension_drops_exactly_the_matches(
    cache: RunningCache, criteria: dict[str, object], dropped: set[str]
) -> None:
    ids = await fill(cache)
    if "entry_ids" in criteria:
        criteria = {"entry_ids": [ids[n] for n in criteria["entry_ids"]]}  # type: ignore[attr-defined]
    reply = await cache.stub.Invalidate(cache_pb2.InvalidateRequest(tenant="a", **criteria))  # type: ignore[arg-type]
    assert reply.removed == len(dropped)
    # Tenant b is never touched by tenant a, whatever a asks for.
    assert await surviving(cache, ids) == set(ids) - dropped


async def test_invalidated_entries_leave_the_semantic_index(cache: RunningCache) -> None:
    await store(cache, T, V, ask("How do I reset my password?", tags=("kb-7",)), "Old link.")
    await cache.stub.Invalidate(cache_pb2.InvalidateRequest(tenant=T, tags=["kb-7"]))
    assert (await lookup(cache, T, V, ask("How can I reset my password?"))).outcome == MISS
    assert cache.app.semantic is not None and len(cache.app.semantic.index) == 0


async def test_an_answer_overtaken_by_an_invalidation_is_not_stored(cache: RunningCache) -> None:
    await cache.stub.Invalidate(cache_pb2.InvalidateRequest(tenant=T, tags=["kb-7"]))
    # The request began 10 s ago, before the invalidation: its answer may
    # rest on the invalidated document.
    late = await store(cache, T, V, ask("What does kb-7 say?", tags=("kb-7",)), "Stale.", request_age_s=10.0)
    assert not late.stored and late.reason == "invalidated"
    # Other tags, and requests that began afterwards, are stored.
    await asyncio.sleep(1.1)
    assert (await store(cache, T, V, ask("What does kb-8 say?", tags=("kb-8",)), "Fine.", request_age_s=10.0)).stored
    assert (await store(cache, T, V, ask("What does kb-7 say?", tags=("kb-7",)), "Fresh.")).stored


async def test_bad_requests_get_invalid_argument(cache: RunningCache) -> None:
    for call in (
        lookup(cache, "", V, ask("x")),
        lookup(cache, T, "no-version", ask("x")),
        cache.stub.Invalidate(cache_pb2.InvalidateRequest(tenant=T, entry_ids=["nope"])),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_restarted_service_rebuilds_its_index_from_redis(redis_url: str, encoder: CountingEncoder) -> None:
    first = await start_cache(redis_url, encoder)
    stored = await store(first, T, V, ask("How do I reset my password?"), "Use the reset link.")
    await store(first, "globex", V, ask("Explain how photosynthesis works."), "Light.")
    await first.close()
    second = await start_cache(redis_url, encoder)
    try:
        assert second.app.semantic is not None and len(second.app.semantic.index) == 2
        hit = await lookup(second, T, V, ask("How can I reset my password?"))
        assert hit.outcome == HIT_SEMANTIC and hit.entry_id == stored.entry_id
    finally:
        await second.close()


async def test_replicas_find_what_the_other_stored(redis_url: str, encoder: CountingEncoder) -> None:
    one = await start_cache(redis_url, encoder)
    two = await start_cache(redis_url, encoder)
    try:
        stored = await store(one, T, V, ask("How do I reset my password?", tags=("kb",)), "Link.")
        hit = await lookup(two, T, V, ask("How can I reset my password?"))
        assert hit.outcome == HIT_SEMANTIC and hit.entry_id == stored.entry_id
        # Invalidated through one, gone from the other (checked against Redis
        # at once, and out of its index at the next sweep).
        await one.stub.Invalidate(cache_pb2.InvalidateRequest(tenant=T, tags=["kb"]))
        assert (await lookup(two, T, V, ask("How can I reset my password?"))).outcome == MISS
        assert two.app.semantic is not None
        await two.app.semantic.index.sweep()
        assert len(two.app.semantic.index) == 0
    finally:
        await one.close()
        await two.close()


async def test_the_exact_cache_works_with_the_semantic_cache_off(redis_url: str) -> None:
    exact_only = await start_cache(redis_url, None)
    try:
        await store(exact_only, T, V, ask("How do I reset my password?"), "Link.")
        assert (await lookup(exact_only, T, V, ask("How do I reset my password?"))).outcome == HIT_EXACT
        assert (await lookup(exact_only, T, V, ask("How can I reset my password?"))).outcome == MISS
    finally:
        await exact_only.close()


async def test_the_verifier_turns_down_near_misses_the_vectors_confuse(cache: RunningCache) -> None:
    stored = {
        "Is it legal to record a phone call?": "Depends on consent laws.",
        "How do I convert Celsius to Fahrenheit?": "Multiply by 9/5, add 32.",
        "What is the paracetamol dose for adults?": "500 mg to 1 g.",
    }
    for question, text in stored.items():
        assert (await store(cache, T, V, ask(question), text)).semantic
    for near_miss in (
        "Is it illegal to record a phone call?",
        "How do I convert Fahrenheit to Celsius?",
        "What is the paracetamol dose for children?",
    ):
        assert (await lookup(cache, T, V, ask(near_miss))).outcome == MISS
    # A true paraphrase of one of them still hits.
    hit = await lookup(cache, T, V, ask("What's the paracetamol dose for adults?"))
    assert hit.outcome == HIT_SEMANTIC and hit.response.text == "500 mg to 1 g."


def pending(tenant: str, version: str, text: str, answer_text: str) -> PendingStore:
    return PendingStore(tenant, version, ask(text), answer(answer_text), [], started=None)


async def test_stores_that_come_together_go_in_one_call_and_each_is_found(cache: RunningCache) -> None:
    stores = CacheStores(cache.stub, max_bytes_per_call=1 << 20)
    results = await asyncio.gather(
        *(stores.call(pending(T, V, f"Name river {i}.", f"River {i}.")) for i in range(20)),
        # A store the cache refuses takes no other store down with it.
        stores.call(pending(T, "no-version", "Name a lake.", "Baikal.")),
    )
    assert [r.stored for r in results] == [True] * 20 + [False]
    assert results[-1].reason.startswith("invalid: model_version")
    # The first went alone, as Store; the other 20 waited for it and went in one StoreMany.
    assert (stores.single_calls, stores.many_calls) == (1, 1)
    for i in (0, 7, 19):
        hit = await lookup(cache, T, V, ask(f"Name river {i}."))
        assert hit.outcome == HIT_EXACT and hit.response.text == f"River {i}."


async def test_store_many_is_bounded_and_checks_each_store(cache: RunningCache) -> None:
    too_many = cache_pb2.CacheStoreManyRequest(stores=[cache_pb2.CacheStoreRequest()] * (MAX_STORES_PER_CALL + 1))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await cache.stub.StoreMany(too_many)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "at most 256" in str(refused.value.details())
    mixed = cache_pb2.CacheStoreManyRequest(
        stores=[
            cache_pb2.CacheStoreRequest(tenant="", model_version=V, request=ask("x"), response=answer("y")),
            cache_pb2.CacheStoreRequest(
                tenant=T, model_version=V, request=ask("Name a sea."), response=answer("Aral.")
            ),
        ]
    )
    reply = await cache.stub.StoreMany(mixed)
    assert [r.stored for r in reply.results] == [False, True]
    assert reply.results[0].reason == "invalid: tenant: required (entries are partitioned by tenant)"
    assert (await lookup(cache, T, V, ask("Name a sea."))).response.text == "Aral."


async def test_lookups_that_come_together_are_answered_each_in_one_call(cache: RunningCache) -> None:
    for i in range(3):
        await store(cache, T, V, ask(f"Name mountain {i}."), f"Mountain {i}.")
    lookups = CacheLookups(cache.stub, max_bytes_per_call=1 << 20)

    def asked(text: str, tenant: str = T) -> cache_pb2.CacheLookupRequest:
        return cache_pb2.CacheLookupRequest(tenant=tenant, model_version=V, request=ask(text))

    answers = await asyncio.gather(
        *(lookups.lookup(asked(f"Name mountain {i}."), 5.0) for i in range(3)),
        lookups.lookup(asked("Name mountain 9."), 5.0),
        # One the cache refuses answers BYPASS alone (the router then asks the engine).
        lookups.lookup(asked("Name mountain 0.", tenant=""), 5.0),
    )
    assert [a.outcome for a in answers] == [HIT_EXACT] * 3 + [MISS, BYPASS]
    assert [a.response.text for a in answers[:3]] == ["Mountain 0.", "Mountain 1.", "Mountain 2."]
    # The first went alone, as Lookup; the other four in one LookupMany.
    assert (lookups.single_calls, lookups.many_calls) == (1, 1)


async def test_lookup_many_is_bounded_and_keeps_each_budget(cache: RunningCache) -> None:
    too_many = cache_pb2.CacheLookupManyRequest(lookups=[cache_pb2.TimedLookup()] * (MAX_LOOKUPS_PER_CALL + 1))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await cache.stub.LookupMany(too_many)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "at most 256" in str(refused.value.details())
    # A budget already spent answers MISS at once (deadline), not the whole call late.
    await store(cache, T, V, ask("Name a desert."), "The Gobi.")
    lookup = cache_pb2.CacheLookupRequest(tenant=T, model_version=V, request=ask("Name a desert."))
    # Budgets a client could send: spent, none of its own, negative, NaN, infinite.
    budgets = [0.001, 0.0, -1.0, float("nan"), float("inf")]
    reply = await cache.stub.LookupMany(
        cache_pb2.CacheLookupManyRequest(lookups=[cache_pb2.TimedLookup(lookup=lookup, budget_s=b) for b in budgets]),
        timeout=5.0,
    )
    assert [r.outcome for r in reply.results] == [MISS, HIT_EXACT, MISS, MISS, HIT_EXACT]
