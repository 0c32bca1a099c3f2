"""The visibility renewal against kombu's real Redis transport: a message a
live consumer holds is not handed out again however long it runs; once the
holder stops renewing, the next sweep puts it back on the queue."""

from __future__ import annotations

import asyncio
import uuid

import redis

from headrace.batch.queue import build_celery_app
from headrace.batch.store import open_redis
from headrace.local.redis_server import RedisServer
from headrace.runtime.config import Settings
from services.worker.consumer.visibility import VisibilityExtender, delivered_tags

VISIBILITY_S = 2.0


async def test_a_renewed_message_stays_held_and_an_abandoned_one_comes_back(redis_server: RedisServer) -> None:
    prefix = f"test-{uuid.uuid4().hex[:8]}:"
    settings = Settings(
        redis_url=redis_server.url,
        batch={"key_prefix": prefix, "visibility_timeout_s": VISIBILITY_S, "restore_interval_s": 1},
    )
    app = build_celery_app(settings)
    queue = "headrace.batch.visibility-test"
    plain = redis.Redis.from_url(redis_server.url)
    aio = open_redis(redis_server.url)
    with app.connection_for_write() as holder_conn, app.connection_for_write() as sweeper_conn:
        holder = holder_conn.default_channel
        sweeper = sweeper_conn.default_channel
        holder.queue_declare(queue)
        holder.basic_publish(holder.prepare_message("chunk"), exchange="", routing_key=queue)
        message = holder.basic_get(queue, no_ack=False)
        assert message is not None
        assert delivered_tags(holder.qos) == [message.delivery_tag]
        assert plain.llen(f"{prefix}{queue}") == 0

        extender = VisibilityExtender(
            aio, key_prefix=prefix, visibility_timeout_s=VISIBILITY_S, held_tags=lambda: delivered_tags(holder.qos)
        )
        renewal = asyncio.create_task(extender.run())
        try:
            # Held for twice the timeout while renewed: every sweep leaves it be.
            for _ in range(8):
                await asyncio.sleep(VISIBILITY_S / 4)
                sweeper.qos.restore_visible(interval=1)
            assert plain.llen(f"{prefix}{queue}") == 0
            assert extender.renewed >= 4
        finally:
            renewal.cancel()
        # The holder "dies": no renewal. One timeout later the sweep gives it back.
        await asyncio.sleep(VISIBILITY_S + 0.5)
        sweeper.qos.restore_visible(interval=1)
        assert plain.llen(f"{prefix}{queue}") == 1
        back = sweeper.basic_get(queue, no_ack=True)
        assert back is not None and back.body == message.body
    await aio.aclose()
    plain.close()


async def test_renewal_never_brings_back_an_acknowledged_message(redis_server: RedisServer) -> None:
    prefix = f"test-{uuid.uuid4().hex[:8]}:"
    aio = open_redis(redis_server.url)
    extender = VisibilityExtender(aio, key_prefix=prefix, visibility_timeout_s=VISIBILITY_S, held_tags=lambda: ["gone"])
    # The tag was acknowledged (removed from the index) before this renewal ran.
    assert await extender.renew_once() == 0
    assert await aio.zcard(f"{prefix}unacked_index") == 0
    await aio.aclose()
