"""Partitions are hard walls: an adversarial attempt to read across tenants
and model versions, with identical and near-identical prompts and tenant
ids crafted to collide, finds no entry but the caller's own."""

from __future__ import annotations

import itertools
import re
from collections.abc import AsyncIterator

import grpc
import grpc.aio
import pytest

from headrace.local.redis_server import RedisServer
from headrace.v1 import generation_pb2
from services.cache.embedder import MiniLmEncoder
from tests.integration.cache.support import RunningCache, ask, cache_redis_url, lookup, start_cache, store

pytestmark = pytest.mark.slow

TENANTS = [
    "acme",
    "Acme",
    "acme ",
    "\u0430cme",  # Cyrillic a
    "caf\u00e9",  # NFC
    "cafe\u0301",  # NFD: the same text to a reader
    "a:b",
    "a",
    "a@m",
    "a\x00",
    "\u202eacme",  # right-to-left override
    "t" * 256,
]
VERSIONS = ["m@1", "m@2", "m@01", "b:m@1"]
STORED = ["How do I reset my password?", "Explain how photosynthesis works.", "What is the refund policy?"]
PROBES = [
    *STORED,
    "How can I reset my password?",
    "how do i reset my password",
    "Can you explain how photosynthesis works?",
    "What's the refund policy?",
]


@pytest.fixture
async def cache(redis_server: RedisServer, minilm: MiniLmEncoder) -> AsyncIterator[RunningCache]:
    running = await start_cache(cache_redis_url(redis_server.url), minilm)
    await running.redis.flushdb()
    yield running
    await running.close()


def marker(tenant: str, version: str, prompt: str) -> str:
    return repr((tenant, version, prompt))


async def test_no_lookup_ever_sees_another_partition(cache: RunningCache) -> None:
    for tenant, version, prompt in itertools.product(TENANTS, VERSIONS, STORED):
        assert (await store(cache, tenant, version, ask(prompt), marker(tenant, version, prompt))).stored
    cross, own_exact, own_semantic = 0, 0, 0
    for tenant, version, probe in itertools.product(TENANTS, VERSIONS, PROBES):
        reply = await lookup(cache, tenant, version, ask(probe))
        if reply.outcome == generation_pb2.CACHE_OUTCOME_MISS:
            continue
        owner = eval(reply.response.text)  # our own marker: a repr'd tuple
        if owner[:2] != (tenant, version):
            cross += 1
        elif reply.outcome == generation_pb2.CACHE_OUTCOME_HIT_EXACT:
            own_exact += 1
        else:
            own_semantic += 1
    assert cross == 0
    # The walls are not just a cache that never answers.
    assert own_exact == len(TENANTS) * len(VERSIONS) * len(STORED)
    assert own_semantic >= len(TENANTS) * len(VERSIONS) * 3


async def test_a_version_the_tenant_never_used_is_empty(cache: RunningCache) -> None:
    for tenant in TENANTS:
        await store(cache, tenant, "m@1", ask(STORED[0]), marker(tenant, "m@1", STORED[0]))
    for tenant, probe in itertools.product(TENANTS, PROBES):
        for version in ("m@3", "m@1 ", "M@1", "m@1\x00"):
            assert (await lookup(cache, tenant, version, ask(probe))).outcome == generation_pb2.CACHE_OUTCOME_MISS


async def test_an_empty_tenant_is_refused_not_pooled(cache: RunningCache) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await store(cache, "", "m@1", ask(STORED[0]), "anyone's")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await lookup(cache, "", "m@1", ask(STORED[0]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_redis_keys_never_carry_a_raw_tenant_id(cache: RunningCache) -> None:
    for tenant in TENANTS:
        await store(cache, tenant, "m@1", ask(STORED[0], tags=("doc:1", tenant)), "x")
    shape = re.compile(rb"^hr:cache:v1:(partitions|(entry|emb|inv|tag):[0-9a-f]{64}|(part|tenant):[0-9a-f]{64}:\w+)$")
    keys = [key.encode() if isinstance(key, str) else key for key in await cache.redis.keys("*")]
    assert keys and all(shape.match(key) for key in keys), [k for k in keys if not shape.match(k)]
