"""Keeps this consumer's messages invisible to the others while it lives.

Celery's Redis transport emulates acknowledgements: a message handed to a
consumer waits in an `unacked` hash, indexed by delivery time in the
`unacked_index` sorted set, and any consumer's periodic sweep puts back on
the queue every message older than the visibility timeout. With a timeout
of hours (above the longest chunk), a killed consumer's chunks, the one it
ran and the ones it had prefetched, came back only hours later.

So the timeout is short (BatchSettings.visibility_timeout_s, seconds) and
a live consumer renews it: every quarter of it, this extender moves the
index entry of each message the consumer still holds to "now". A consumer
that dies stops renewing, and its messages go back on the queue one
timeout (plus one sweep) later, to be run by whichever consumer is alive.
The renewal is `ZADD XX`: it updates entries and never adds one, so a
message acknowledged meanwhile is not brought back.

Only the index score changes; Celery's own bookkeeping stays as it is.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection

import redis.asyncio as aioredis

log = logging.getLogger(__name__)

# kombu.transport.redis.Channel.unacked_index_key (under global_keyprefix).
UNACKED_INDEX = "unacked_index"

# The delivery tags of the messages this consumer holds now (running or prefetched).
HeldTags = Callable[[], Collection[str]]


def unacked_index_key(key_prefix: str) -> str:
    return f"{key_prefix}{UNACKED_INDEX}"


def renew_every_s(visibility_timeout_s: float) -> float:
    """Renew four times per timeout: three renewals may fail (a Redis
    hiccup) before another consumer takes a message that is still running."""
    return visibility_timeout_s / 4


class VisibilityExtender:
    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        key_prefix: str,
        visibility_timeout_s: float,
        held_tags: HeldTags,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = redis
        self._key = unacked_index_key(key_prefix)
        self._every_s = renew_every_s(visibility_timeout_s)
        self._held_tags = held_tags
        self._clock = clock
        self.renewed = 0

    async def renew_once(self) -> int:
        """Move each held message's delivery time to now; returns how many
        entries were updated."""
        tags = list(self._held_tags())
        if not tags:
            return 0
        now = self._clock()
        updated = await self._redis.zadd(self._key, dict.fromkeys(tags, now), xx=True, ch=True)
        self.renewed += 1
        return int(updated or 0)

    async def run(self) -> None:
        while True:
            try:
                await self.renew_once()
            except Exception:
                # The next renewal may work; three in a row may fail
                # before a message is taken over (and then run again, which
                # writes nothing twice: rows are idempotent).
                log.warning("could not renew the visibility of held batch messages", exc_info=True)
            await asyncio.sleep(self._every_s)


def delivered_tags(qos: object) -> list[str]:
    """The tags kombu's virtual QoS holds unacknowledged (its `_delivered`
    map, changed by Celery's threads while this reads it: copied, retried)."""
    delivered = getattr(qos, "_delivered", None)
    if delivered is None:
        return []
    for _ in range(5):
        try:
            return [str(tag) for tag in list(delivered)]
        except RuntimeError:
            # "dictionary changed size during iteration"
            continue
    return []
