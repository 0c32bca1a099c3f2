"""Exact-match entries in Redis. Each entry records its tenant and model
version, and a lookup checks both: partitions are hard walls even if two
keys ever collided."""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis.asyncio as redis

_PREFIX = "hr:cache:v1"


@dataclass(frozen=True)
class CachedEntry:
    entry_id: str
    tenant: str
    model_version: str
    response: bytes
    created_at: float

    def age_s(self, now: float | None = None) -> float:
        return (now if now is not None else time.time()) - self.created_at


def entry_key(entry_id: str) -> str:
    return f"{_PREFIX}:entry:{entry_id}"


class ExactStore:
    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    async def get(self, entry_id: str, *, tenant: str, model_version: str) -> CachedEntry | None:
        # The client returns bytes (decode_responses is off: responses are binary).
        fields: dict[bytes, bytes] = await self._redis.hgetall(entry_key(entry_id))  # type: ignore[assignment,misc]
        if not fields:
            return None
        entry = CachedEntry(
            entry_id=entry_id,
            tenant=fields[b"tenant"].decode(),
            model_version=fields[b"model_version"].decode(),
            response=fields[b"response"],
            created_at=float(fields[b"created_at"]),
        )
        if entry.tenant != tenant or entry.model_version != model_version:
            return None
        return entry

    async def put(
        self,
        entry_id: str,
        *,
        tenant: str,
        model_version: str,
        response: bytes,
        ttl_s: int,
        tags: list[str],
    ) -> None:
        key = entry_key(entry_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                key,
                mapping={
                    "tenant": tenant,
                    "model_version": model_version,
                    "response": response,
                    "created_at": repr(time.time()),
                    "tags": "\n".join(tags),
                },
            )
            pipe.expire(key, ttl_s)
            await pipe.execute()
