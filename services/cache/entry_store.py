"""Cache entries in Redis, and the indexes that find them again.

    entry:{id}            hash: tenant, model_version, answer, created_at,
                          expires_at, tags, scope and vector (semantic entries)
    part:{pid}:expiry     zset: the partition's entries by expiry time
    part:{pid}:log        zset: its semantic entries by commit sequence
    part:{pid}:seq        counter for the log
    tag:{digest}          zset: one tenant's entries with one tag, by expiry
    partitions            hash: partition id -> [tenant, model_version]
    tenant:{d}:partitions the same, for one tenant
    inv:{digest}          when a tenant last invalidated by one criterion

An entry expires with its TTL; the sorted sets score members by the same
expiry, so reads skip expired members at once and pruning (on every store
and in the sweeper) removes them. A store is one Lua script: the entry, its
index memberships and the log sequence change together, in commit order.
This assumes one Redis (not Cluster): the script touches keys it derives.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import redis.asyncio as redis

from services.cache.embedder import Vectors
from services.cache.partition import (
    ENTRY_KEY_PREFIX,
    PARTITIONS_KEY,
    Partition,
    entry_key,
    expiry_key,
    log_key,
    seq_key,
    tag_key,
    tenant_partitions_key,
    watermark_key,
)

# Keep invalidation watermarks this long: longer than any request runs.
WATERMARK_TTL_S = 86400
_CHUNK = 500

_PUT = """
local function extend(key, ttl)
  if redis.call('TTL', key) < ttl then redis.call('EXPIRE', key, ttl) end
end
local id, pid, pjson = ARGV[1], ARGV[2], ARGV[3]
local ttl, now, expires = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local started, max_entries = tonumber(ARGV[7]), tonumber(ARGV[8])
local ntags, nmarks, semantic = tonumber(ARGV[9]), tonumber(ARGV[10]), ARGV[11]
for i = 7 + ntags, 6 + ntags + nmarks do
  local mark = redis.call('GET', KEYS[i])
  if mark and tonumber(mark) >= started then return 'stale' end
end
local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, 64)
for _, old in ipairs(expired) do
  redis.call('ZREM', KEYS[3], old)
  redis.call('ZREM', KEYS[2], old)
end
if not redis.call('ZSCORE', KEYS[3], id) then
  local over = redis.call('ZCARD', KEYS[3]) - max_entries + 1
  if over > 0 then
    local victims = redis.call('ZPOPMIN', KEYS[3], over)
    for i = 1, #victims, 2 do
      redis.call('ZREM', KEYS[2], victims[i])
      redis.call('DEL', ARGV[12] .. victims[i])
    end
  end
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 13))
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('ZADD', KEYS[3], expires, id)
if semantic == '1' then
  redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[4]), id)
else
  redis.call('ZREM', KEYS[2], id)
end
extend(KEYS[2], ttl)
extend(KEYS[3], ttl)
extend(KEYS[4], ttl)
redis.call('HSET', KEYS[5], pid, pjson)
redis.call('HSET', KEYS[6], pid, pjson)
for i = 7, 6 + ntags do
  redis.call('ZADD', KEYS[i], expires, id)
  extend(KEYS[i], ttl)
end
return 'stored'
"""

_PRUNE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
end
return ids
"""


@dataclass(frozen=True)
class StoredEntry:
    entry_id: str
    tenant: str
    model_version: str
    # The serialized lookup reply (response and deltas) to send on a hit.
    answer: bytes
    created_at: float
    expires_at: float
    tags: tuple[str, ...]
    # Context scope of a semantic entry, "" otherwise.
    scope: str
    # The semantic key's text (the last user turn) of a semantic entry, for
    # the verifier; "" otherwise, and for entries stored before it was kept.
    text: str = ""

    def age_s(self, now: float | None = None) -> float:
        return (now if now is not None else time.time()) - self.created_at


@dataclass(frozen=True)
class IndexedVector:
    entry_id: str
    partition: Partition
    scope: str
    vector: Vectors
    expires_at: float


@dataclass(frozen=True)
class InvalidateCriteria:
    tenant: str
    model: str = ""
    model_version: str = ""
    tags: tuple[str, ...] = ()
    entry_ids: tuple[str, ...] = ()

    def watermarks(self) -> list[str]:
        """The narrowest criterion, recorded so that answers to requests
        already running when it was set are not stored. Narrower than the
        whole (AND) would be wrong; wider only costs a few stores."""
        if self.entry_ids:
            return [watermark_key(self.tenant, "entry", e) for e in self.entry_ids]
        if self.tags:
            return [watermark_key(self.tenant, "tag", t) for t in self.tags]
        if self.model_version:
            return [watermark_key(self.tenant, "version", self.model_version)]
        if self.model:
            return [watermark_key(self.tenant, "model", self.model)]
        return [watermark_key(self.tenant, "all")]

    def matches(self, tenant: str, model_version: str, tags: Iterable[str]) -> bool:
        if tenant != self.tenant:
            return False
        if self.model and model_version.split("@", 1)[0] != self.model:
            return False
        if self.model_version and model_version != self.model_version:
            return False
        return not self.tags or bool(set(self.tags) & set(tags))


def _watermarks_for(partition: Partition, entry_id: str, tags: Sequence[str]) -> list[str]:
    tenant = partition.tenant
    return [
        watermark_key(tenant, "all"),
        watermark_key(tenant, "model", partition.model),
        watermark_key(tenant, "version", partition.model_version),
        watermark_key(tenant, "entry", entry_id),
        *(watermark_key(tenant, "tag", tag) for tag in tags),
    ]


def _text(raw: bytes | None) -> str:
    return raw.decode() if raw is not None else ""


class EntryStore:
    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._put = client.register_script(_PUT)
        self._prune = client.register_script(_PRUNE)

    async def get(self, entry_id: str, partition: Partition, *, now: float | None = None) -> StoredEntry | None:
        """The entry, if it exists, is live and belongs to this very partition."""
        # decode_responses is off: answers are binary.
        fields = cast(dict[bytes, bytes], await self._redis.hgetall(entry_key(entry_id)))  # type: ignore[misc]
        if not fields or b"answer" not in fields:
            return None
        entry = StoredEntry(
            entry_id=entry_id,
            tenant=_text(fields.get(b"tenant")),
            model_version=_text(fields.get(b"model_version")),
            answer=fields[b"answer"],
            created_at=float(fields.get(b"created_at", b"0")),
            expires_at=float(fields.get(b"expires_at", b"0")),
            tags=tuple(json.loads(fields.get(b"tags", b"[]"))),
            scope=_text(fields.get(b"scope")),
            text=_text(fields.get(b"text")),
        )
        if entry.tenant != partition.tenant or entry.model_version != partition.model_version:
            return None
        if entry.expires_at <= (now if now is not None else time.time()):
            return None
        return entry

    async def texts(self, entry_ids: Sequence[str]) -> list[str | None]:
        """The semantic key text of each entry ("" if it has none), None
        where the entry is gone: one round trip, so that the verifier can
        judge every candidate before any answer is read."""
        if not entry_ids:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for entry_id in entry_ids:
                pipe.hmget(entry_key(entry_id), ["text", "tenant"])
            rows = cast(list[list[bytes | None]], await pipe.execute())
        return [None if tenant is None else _text(text) for text, tenant in rows]

    async def put(
        self,
        entry_id: str,
        partition: Partition,
        *,
        answer: bytes,
        ttl_s: int,
        tags: Sequence[str],
        request_started_at: float,
        max_entries: int,
        scope: str = "",
        vector: Vectors | None = None,
        text: str = "",
    ) -> bool:
        """Store the entry; False when an invalidation newer than the
        request that produced it matches it (the answer may be stale)."""
        now = time.time()
        expires_at = now + ttl_s
        tags = list(dict.fromkeys(tags))
        marks = _watermarks_for(partition, entry_id, tags)
        fields: list[bytes | str] = [
            "tenant", partition.tenant,
            "model_version", partition.model_version,
            "answer", answer,
            "created_at", repr(now),
            "expires_at", repr(expires_at),
            "tags", json.dumps(tags, ensure_ascii=False),
        ]  # fmt: skip
        semantic = vector is not None and bool(scope)
        if semantic and vector is not None:
            fields += ["scope", scope, "text", text, "vector", np.asarray(vector, dtype=np.float32).tobytes()]
        keys = [
            entry_key(entry_id),
            log_key(partition),
            expiry_key(partition),
            seq_key(partition),
            PARTITIONS_KEY,
            tenant_partitions_key(partition.tenant),
            *(tag_key(partition.tenant, tag) for tag in tags),
            *marks,
        ]
        args: list[bytes | str | int | float] = [
            entry_id, partition.id, partition.to_json(), ttl_s, repr(now), repr(expires_at),
            repr(request_started_at), max_entries, len(tags), len(marks), "1" if semantic else "0",
            ENTRY_KEY_PREFIX, *fields,
        ]  # fmt: skip
        result = await self._put(keys=keys, args=args)
        return bytes(result) == b"stored"

    async def log_since(self, partition: Partition, after_seq: int, limit: int = _CHUNK) -> list[tuple[str, int]]:
        """Semantic entries committed after `after_seq`, in commit order."""
        rows = cast(
            list[tuple[bytes, float]],
            await self._redis.zrangebyscore(
                log_key(partition), f"({after_seq}", "+inf", start=0, num=limit, withscores=True
            ),
        )
        return [(member.decode(), int(score)) for member, score in rows]

    async def log_ids(self, partition: Partition) -> set[str]:
        members = cast(list[bytes], await self._redis.zrange(log_key(partition), 0, -1))
        return {m.decode() for m in members}

    async def vectors(self, partition: Partition, entry_ids: Sequence[str]) -> list[IndexedVector]:
        """The vectors of live semantic entries of this partition."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for entry_id in entry_ids:
                pipe.hmget(entry_key(entry_id), ["tenant", "model_version", "scope", "vector", "expires_at"])
            rows: list[list[bytes | None]] = await pipe.execute()
        now = time.time()
        found: list[IndexedVector] = []
        for entry_id, (tenant, version, scope, vector, expires_at) in zip(entry_ids, rows, strict=True):
            if tenant is None or vector is None or scope is None or expires_at is None:
                continue
            if tenant.decode() != partition.tenant or _text(version) != partition.model_version:
                continue
            if float(expires_at) <= now:
                continue
            found.append(
                IndexedVector(
                    entry_id=entry_id,
                    partition=partition,
                    scope=scope.decode(),
                    vector=np.frombuffer(vector, dtype=np.float32).copy(),
                    expires_at=float(expires_at),
                )
            )
        return found

    async def prune(self, partition: Partition, *, limit: int = _CHUNK) -> list[str]:
        """Remove expired members from the partition's indexes; their ids."""
        removed: list[bytes] = await self._prune(
            keys=[expiry_key(partition), log_key(partition)], args=[repr(time.time()), limit]
        )
        return [r.decode() for r in removed]

    async def partitions(self) -> list[Partition]:
        """Partitions that still hold entries (registry entries of emptied
        partitions are dropped on the way)."""
        raw = cast(dict[bytes, bytes], await self._redis.hgetall(PARTITIONS_KEY))  # type: ignore[misc]
        found: list[Partition] = []
        for pid, pjson in raw.items():
            partition = Partition.from_json(pjson)
            if partition.id != pid.decode():
                continue
            if await self._redis.exists(expiry_key(partition)):
                found.append(partition)
            else:
                await self._forget(partition)
        return found

    async def _forget(self, partition: Partition) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hdel(PARTITIONS_KEY, partition.id)
            pipe.hdel(tenant_partitions_key(partition.tenant), partition.id)
            await pipe.execute()

    async def tenant_partitions(self, tenant: str) -> list[Partition]:
        raw = cast(dict[bytes, bytes], await self._redis.hgetall(tenant_partitions_key(tenant)))  # type: ignore[misc]
        partitions = [Partition.from_json(pjson) for pjson in raw.values()]
        return [p for p in partitions if p.tenant == tenant]

    async def invalidate(self, criteria: InvalidateCriteria) -> list[tuple[Partition, str]]:
        """Drop every entry matching all the criteria; (partition, id) of each."""
        now = time.time()
        async with self._redis.pipeline(transaction=False) as pipe:
            for mark in criteria.watermarks():
                pipe.set(mark, repr(now), ex=WATERMARK_TTL_S)
            await pipe.execute()
        candidates = await self._candidates(criteria)
        removed: list[tuple[Partition, str]] = []
        for start in range(0, len(candidates), _CHUNK):
            chunk = candidates[start : start + _CHUNK]
            async with self._redis.pipeline(transaction=False) as pipe:
                for entry_id in chunk:
                    pipe.hmget(entry_key(entry_id), ["tenant", "model_version", "tags"])
                rows: list[list[bytes | None]] = await pipe.execute()
            doomed: list[tuple[Partition, str, list[str]]] = []
            for entry_id, (tenant, version, tags) in zip(chunk, rows, strict=True):
                if tenant is None or version is None:
                    continue
                entry_tags = json.loads(tags) if tags else []
                if criteria.matches(tenant.decode(), version.decode(), entry_tags):
                    doomed.append((Partition(tenant.decode(), version.decode()), entry_id, entry_tags))
            if not doomed:
                continue
            async with self._redis.pipeline(transaction=True) as pipe:
                for partition, entry_id, entry_tags in doomed:
                    pipe.delete(entry_key(entry_id))
                    pipe.zrem(expiry_key(partition), entry_id)
                    pipe.zrem(log_key(partition), entry_id)
                    for tag in entry_tags:
                        pipe.zrem(tag_key(partition.tenant, tag), entry_id)
                results = await pipe.execute()
            # Each entry's first command is its DEL: count what really went.
            index = 0
            for partition, entry_id, entry_tags in doomed:
                if results[index]:
                    removed.append((partition, entry_id))
                index += 3 + len(entry_tags)
        return removed

    async def _candidates(self, criteria: InvalidateCriteria) -> list[str]:
        if criteria.entry_ids:
            return list(dict.fromkeys(criteria.entry_ids))
        if criteria.tags:
            ids: dict[str, None] = {}
            for tag in criteria.tags:
                members = cast(list[bytes], await self._redis.zrange(tag_key(criteria.tenant, tag), 0, -1))
                ids.update((m.decode(), None) for m in members)
            return list(ids)
        ids = {}
        for partition in await self.tenant_partitions(criteria.tenant):
            if criteria.model and partition.model != criteria.model:
                continue
            if criteria.model_version and partition.model_version != criteria.model_version:
                continue
            members = cast(list[bytes], await self._redis.zrange(expiry_key(partition), 0, -1))
            ids.update((m.decode(), None) for m in members)
        return list(ids)
