"""The Celery side: one app factory, one task table, one decorator."""

from __future__ import annotations

from typing import Any

import pytest
from celery import Task

from headrace.batch.queue import RUN_CHUNK, batch_task, build_celery_app, queue_name, trace_carrier
from headrace.runtime.config import BatchSettings, Settings


def settings(**batch: Any) -> Settings:
    return Settings(redis_url="redis://127.0.0.1:1/0", batch=batch)


def test_the_app_acknowledges_late_and_redelivers_after_the_visibility_timeout() -> None:
    app = build_celery_app(settings(visibility_timeout_s=900, chunk_timeout_s=600, key_prefix="hr:"))
    conf = app.conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost and conf.worker_prefetch_multiplier == 1
    assert conf.broker_url == "redis://127.0.0.1:1/0"
    options = conf.broker_transport_options
    assert options["visibility_timeout"] == 900 and options["global_keyprefix"] == "hr:"
    assert queue_name("smollm2") == "headrace.batch.smollm2"


def test_a_dead_consumers_chunks_come_back_within_seconds_by_default() -> None:
    # Live consumers renew what they hold (services/worker/consumer/visibility.py),
    # so the timeout bounds recovery, not the longest chunk.
    defaults = BatchSettings()
    assert defaults.visibility_timeout_s + defaults.restore_interval_s <= 30
    assert defaults.chunk_timeout_s > defaults.visibility_timeout_s
    with pytest.raises(ValueError, match="visibility_timeout_s"):
        BatchSettings(visibility_timeout_s=1)


def test_tasks_need_a_name_from_the_table() -> None:
    app = build_celery_app(settings())
    with pytest.raises(ValueError, match="TASKS"):
        batch_task(app, name="headrace.batch.something_else")


def test_each_app_keeps_its_own_task() -> None:
    """Celery shares tasks between apps by default; ours must not, or a new
    consumer would run the task of an old one."""
    calls: list[str] = []

    def register(tag: str) -> Task:
        app = build_celery_app(settings())

        @batch_task(app, name=RUN_CHUNK)
        def run_chunk(self: Task, batch_id: str, chunk: int) -> None:
            calls.append(f"{tag}:{batch_id}:{chunk}")

        return app.tasks[RUN_CHUNK]

    first, second = register("first"), register("second")
    first.run("b", 0)
    second.run("b", 1)
    assert calls == ["first:b:0", "second:b:1"]
    assert first.acks_late and first.name == RUN_CHUNK


def test_trace_headers_are_read_from_the_message() -> None:
    class Request:
        headers = {"traceparent": "00-aa-bb-01", "other": "x"}

    assert trace_carrier(Request()) == {"traceparent": "00-aa-bb-01"}
    assert trace_carrier(object()) == {}
