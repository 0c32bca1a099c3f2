"""The scheduler replicas alive now, and this replica's share of every
worker's slots.

Each replica admits on its own, from its own memory, and may hold at most
its share of a worker's slot limit in leases: the limit split evenly over
the N replicas alive, the remainder going to different replicas for
different workers (so a worker with one slot and two replicas is not always
the same replica's). Shares of replicas that agree on who is alive sum to
the limit, so they cannot double-book a worker between them, however
stale their view of each other's leases is.

Who is alive: each replica keeps a key in Redis with a TTL (`replica_ttl_s`)
and rewrites it every third of it; the set of replica ids says whose keys
to look for. A replica killed outright stops beating, its key expires, and
the survivors' next beat sees N - 1 and gives them its share: within
`replica_ttl_s` plus one beat. A replica that stops cleanly deletes its key
at once. If Redis cannot be reached, a replica keeps the view it had (so it
never grows its share on a guess) and says so in its log; until its first
beat succeeds, that view is every configured replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zlib
from collections.abc import Callable, Sequence
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from services.scheduler import metrics

log = logging.getLogger(__name__)

KEY_PREFIX = "headrace:scheduler:"


class SlotShare(Protocol):
    @property
    def replicas(self) -> int:
        """Replicas sharing the slots, this one included."""
        ...

    def of(self, worker_id: str, limit: int) -> int:
        """How many of the worker's `limit` slots this replica may lease."""
        ...


class WholeShare:
    """One scheduler: every slot is its own."""

    replicas = 1

    def of(self, worker_id: str, limit: int) -> int:
        return limit


def share_of(limit: int, *, worker_id: str, rank: int, live: int) -> int:
    """Replica number `rank` of `live` replicas: its even part of `limit`,
    plus one of the remainder, which goes to the replicas just after a
    point that depends on the worker (crc32: the same on every replica)."""
    if live <= 1:
        return limit
    base, extra = divmod(max(0, limit), live)
    offset = zlib.crc32(worker_id.encode()) % live
    return base + (1 if (rank - offset) % live < extra else 0)


class ReplicaSet:
    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        replica_id: str,
        ttl_s: float,
        key_prefix: str = KEY_PREFIX,
        expected: Sequence[str] = (),
        on_change: Callable[[], None] | None = None,
    ) -> None:
        """`expected`: the configured replicas, assumed alive until Redis
        says otherwise (a replica that cannot reach Redis at its start
        must not take the whole of every worker)."""
        self.replica_id = replica_id
        self._redis = redis
        self._ttl_ms = max(1, int(ttl_s * 1000))
        self._beat_s = ttl_s / 3
        self._members_key = f"{key_prefix}replicas"
        self._key_prefix = f"{key_prefix}replica:"
        self._on_change = on_change
        self.live: tuple[str, ...] = tuple(sorted({replica_id, *expected}))
        self._rank = self.live.index(replica_id)
        self._task: asyncio.Task[None] | None = None
        self._failing_since: float | None = None

    @property
    def replicas(self) -> int:
        return len(self.live)

    def of(self, worker_id: str, limit: int) -> int:
        return share_of(limit, worker_id=worker_id, rank=self._rank, live=len(self.live))

    async def start(self) -> None:
        await self.beat()
        self._task = asyncio.create_task(self._beat_forever(), name="scheduler-replica-beat")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        # Gone now, not after the TTL: the others take the share at once.
        with contextlib.suppress(RedisError, OSError):
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.delete(self._key(self.replica_id))
                pipe.srem(self._members_key, self.replica_id)
                await pipe.execute()

    def _key(self, replica_id: str) -> str:
        return f"{self._key_prefix}{replica_id}"

    async def beat(self) -> None:
        """Say this replica is alive, and read who else is."""
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.set(self._key(self.replica_id), b"1", px=self._ttl_ms)
                pipe.sadd(self._members_key, self.replica_id)
                pipe.smembers(self._members_key)
                _, _, members = await pipe.execute()
            ids = sorted(m.decode() if isinstance(m, bytes) else str(m) for m in members)
            async with self._redis.pipeline(transaction=False) as pipe:
                for replica_id in ids:
                    pipe.exists(self._key(replica_id))
                alive = await pipe.execute()
        except (RedisError, OSError) as exc:
            now = time.monotonic()
            if self._failing_since is None:
                self._failing_since = now
                log.warning("replica heartbeat failed (%s); keeping the view %s", exc, ",".join(self.live))
            return
        if self._failing_since is not None:
            log.info("replica heartbeat back after %.1fs", time.monotonic() - self._failing_since)
            self._failing_since = None
        live = {replica_id for replica_id, exists in zip(ids, alive, strict=True) if exists}
        dead = [replica_id for replica_id in ids if replica_id not in live]
        if dead:
            with contextlib.suppress(RedisError, OSError):
                await self._redis.srem(self._members_key, *dead)
        live.add(self.replica_id)
        self._set_live(tuple(sorted(live)))

    def _set_live(self, live: tuple[str, ...]) -> None:
        if live == self.live:
            return
        log.info("scheduler replicas alive: %s (was %s)", ",".join(live), ",".join(self.live))
        self.live = live
        self._rank = live.index(self.replica_id)
        metrics.REPLICAS.set(len(live))
        if self._on_change is not None:
            # Shares grew or shrank: waiters may fit now.
            self._on_change()

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(self._beat_s)
            await self.beat()
