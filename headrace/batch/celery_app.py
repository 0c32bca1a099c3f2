"""The batch queue's Celery app at module level, for Celery's own tools:

    celery -A headrace.batch.celery_app inspect ping
    celery -A headrace.batch.celery_app inspect active_queues
    celery -A headrace.batch.celery_app events
    celery -A headrace.batch.celery_app flower      (where Flower is installed)

Built from the same settings as the services (HEADRACE_REDIS_URL,
HEADRACE_CONFIG, HEADRACE_BATCH__*), so it finds the broker and the key
prefix (batch.key_prefix) the consumers use. The services build their own
apps (headrace.batch.queue.build_celery_app); nothing imports this one.
"""

from __future__ import annotations

from celery import Celery

from headrace.batch.queue import build_celery_app
from headrace.runtime.config import load_settings

app: Celery = build_celery_app(load_settings(), name="headrace-batch")
