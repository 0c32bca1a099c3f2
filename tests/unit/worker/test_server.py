"""The Worker servicer's Generate and Complete on the synthetic engine: what it sends,
what it charges, and what it counts as online work."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

import pytest

from headrace.runtime.config import LimitSettings
from headrace.runtime.engine_settings import SyntheticEngineSettings
from headrace.runtime.errors import InvalidArgument, Preempted
from headrace.v1 import generation_pb2, worker_pb2
from services.worker.engines.synthetic import SyntheticEngine
from services.worker.server import WorkerServicer


def request(
    priority: generation_pb2.Priority.ValueType, *, whole_answer: bool = False
) -> worker_pb2.WorkerGenerateRequest:
    return worker_pb2.WorkerGenerateRequest(
        request_id="r1",
        model_version="m@1",
        request=generation_pb2.GenerateRequest(
            prompt="a b c", sampling=generation_pb2.SamplingParams(max_tokens=4), priority=priority
        ),
        whole_answer=whole_answer,
    )


async def generate(servicer: WorkerServicer, call: worker_pb2.WorkerGenerateRequest) -> list[Any]:
    return [message async for message in servicer.Generate(call, None)]  # type: ignore[arg-type]


async def test_streams_each_token_and_charges_the_engine_time_on_the_last() -> None:
    engine = SyntheticEngine(SyntheticEngineSettings(ttft_ms=0, tokens_per_s=200))
    servicer = WorkerServicer(engine, model_versions=["m@1"], limits=LimitSettings())
    messages = await generate(servicer, request(generation_pb2.PRIORITY_STANDARD))
    assert len(messages) == 4
    assert [m.finish_reason for m in messages[:-1]] == [generation_pb2.FINISH_REASON_UNSPECIFIED] * 3
    last = messages[-1]
    assert last.finish_reason == generation_pb2.FINISH_REASON_LENGTH and last.usage.completion_tokens == 4
    # Three paced gaps of 5 ms, with the engine to itself.
    assert 0.01 < last.cost.engine_seconds < 1.0
    assert last.timing.engine_ms == pytest.approx(last.cost.engine_seconds * 1000.0)
    assert engine.running == 0


async def test_a_whole_answer_is_one_message_with_every_token() -> None:
    engine = SyntheticEngine(SyntheticEngineSettings(ttft_ms=0, tokens_per_s=10_000))
    servicer = WorkerServicer(engine, model_versions=["m@1"], limits=LimitSettings())
    streamed = await generate(servicer, request(generation_pb2.PRIORITY_STANDARD))
    (whole,) = await generate(servicer, request(generation_pb2.PRIORITY_STANDARD, whole_answer=True))
    assert whole.text == "".join(m.text for m in streamed)
    assert list(whole.token_ids) == [t for m in streamed for t in m.token_ids]
    assert whole.finish_reason == generation_pb2.FINISH_REASON_LENGTH


async def test_complete_answers_as_generate_does_a_whole_answer() -> None:
    engine = SyntheticEngine(SyntheticEngineSettings(ttft_ms=0, tokens_per_s=10_000))
    servicer = WorkerServicer(engine, model_versions=["m@1"], limits=LimitSettings())
    (whole,) = await generate(servicer, request(generation_pb2.PRIORITY_STANDARD, whole_answer=True))
    # whole_answer need not be set: Complete always answers in one piece.
    answer = await servicer.Complete(request(generation_pb2.PRIORITY_STANDARD), None)  # type: ignore[arg-type]
    assert (answer.text, list(answer.token_ids)) == (whole.text, list(whole.token_ids))
    assert answer.finish_reason == generation_pb2.FINISH_REASON_LENGTH
    assert answer.usage.completion_tokens == 4
    assert answer.cost.engine_seconds > 0
    assert engine.running == 0


async def test_a_cancelled_complete_frees_its_sequence() -> None:
    engine = SyntheticEngine(SyntheticEngineSettings(ttft_ms=0, tokens_per_s=2))
    servicer = WorkerServicer(engine, model_versions=["m@1"], limits=LimitSettings())
    call = asyncio.ensure_future(servicer.Complete(request(generation_pb2.PRIORITY_STANDARD), None))  # type: ignore[arg-type]
    for _ in range(100):
        if engine.running:
            break
        await asyncio.sleep(0.01)
    assert engine.running == 1
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert engine.running == 0


async def test_complete_refuses_a_request_it_cannot_answer() -> None:
    servicer = WorkerServicer(
        SyntheticEngine(SyntheticEngineSettings(ttft_ms=0)), model_versions=["m@1"], limits=LimitSettings()
    )
    bad = request(generation_pb2.PRIORITY_STANDARD)
    bad.request_id = ""
    with pytest.raises(InvalidArgument, match="request_id"):
        await servicer.Complete(bad, None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("priority", "online"),
    [
        (generation_pb2.PRIORITY_INTERACTIVE, 1),
        (generation_pb2.PRIORITY_UNSPECIFIED, 1),
        (generation_pb2.PRIORITY_BATCH, 0),
    ],
)
async def test_batch_rows_are_not_online_work(priority: generation_pb2.Priority.ValueType, online: int) -> None:
    engine = SyntheticEngine(SyntheticEngineSettings(ttft_ms=0, tokens_per_s=10_000))
    servicer = WorkerServicer(engine, model_versions=["m@1"], limits=LimitSettings())
    stream = servicer.Generate(request(priority), None)  # type: ignore[arg-type]
    await anext(stream)
    load = await servicer.GetLoad(worker_pb2.GetLoadRequest(), None)  # type: ignore[arg-type]
    assert (load.running, load.online) == (1, online)
    assert isinstance(stream, AsyncGenerator)
    await stream.aclose()
    load = await servicer.GetLoad(worker_pb2.GetLoadRequest(), None)  # type: ignore[arg-type]
    assert (load.running, load.online) == (0, 0)


def row(request_id: str, max_tokens: int, model_version: str = "m@1") -> worker_pb2.WorkerGenerateRequest:
    return worker_pb2.WorkerGenerateRequest(
        request_id=request_id,
        model_version=model_version,
        request=generation_pb2.GenerateRequest(
            prompt="a b c", sampling=generation_pb2.SamplingParams(max_tokens=max_tokens)
        ),
        priority=generation_pb2.PRIORITY_BATCH,
    )


async def test_generate_batch_answers_each_row_as_it_ends_and_fails_only_the_bad_one() -> None:
    engine = SyntheticEngine(SyntheticEngineSettings(ttft_ms=0, tokens_per_s=500))
    servicer = WorkerServicer(engine, model_versions=["m@1"], limits=LimitSettings())
    call = worker_pb2.GenerateBatchRequest(rows=[row("long", 20), row("other-model", 2, "x@1"), row("short", 2)])
    results = [r async for r in servicer.GenerateBatch(call, None)]  # type: ignore[arg-type]
    # Each row's result as it ends: the bad row at once, the short one before the long one.
    assert [r.request_id for r in results] == ["other-model", "short", "long"]
    bad, short, long = results
    assert bad.error_code == 5 and "x@1" in bad.error_message and not bad.HasField("answer")
    assert (short.error_code, short.answer.usage.completion_tokens, len(short.answer.token_ids)) == (0, 2, 2)
    assert long.answer.finish_reason == generation_pb2.FINISH_REASON_LENGTH and len(long.answer.token_ids) == 20
    assert engine.running == 0


async def test_generate_batch_refuses_calls_it_cannot_answer_row_by_row() -> None:
    servicer = WorkerServicer(
        SyntheticEngine(SyntheticEngineSettings()), model_versions=["m@1"], limits=LimitSettings()
    )
    for rows in ([], [row("same", 1), row("same", 1)]):
        with pytest.raises(InvalidArgument):
            async for _ in servicer.GenerateBatch(worker_pb2.GenerateBatchRequest(rows=rows), None):  # type: ignore[arg-type]
                pass


async def test_a_preemptible_row_that_arrives_while_online_work_runs_is_turned_away_beyond_the_share() -> None:
    # Rows leased before an online request came reach the worker after it
    # made room: they must not refill the engine behind it.
    engine = SyntheticEngine(SyntheticEngineSettings(ttft_ms=0, tokens_per_s=50, max_concurrency=4))
    servicer = WorkerServicer(
        engine, model_versions=["m@1"], limits=LimitSettings(), preempt_batch=True, batch_share_while_online=0.25
    )

    def batch_row(request_id: str, *, preemptible: bool) -> worker_pb2.WorkerGenerateRequest:
        call = row(request_id, 100)
        call.preemptible = preemptible
        return call

    kept = servicer.Generate(batch_row("kept", preemptible=True), None)  # type: ignore[arg-type]
    await anext(kept)
    online_call = request(generation_pb2.PRIORITY_INTERACTIVE)
    online_call.request.sampling.max_tokens = 100
    online = servicer.Generate(online_call, None)  # type: ignore[arg-type]
    await anext(online)
    # The share of 4 slots is 1 row, and "kept" holds it.
    with pytest.raises(Preempted):
        await anext(servicer.Generate(batch_row("late", preemptible=True), None))  # type: ignore[arg-type]
    # A retried row (not preemptible) is never stopped twice.
    retried = servicer.Generate(batch_row("retried", preemptible=False), None)  # type: ignore[arg-type]
    await anext(retried)
    assert servicer.preemption.preempted_total == 1
    for stream in (online, retried):
        assert isinstance(stream, AsyncGenerator)
        await stream.aclose()
    # No online work left: rows run again.
    after = servicer.Generate(batch_row("after", preemptible=True), None)  # type: ignore[arg-type]
    await anext(after)
    for stream in (kept, after):
        assert isinstance(stream, AsyncGenerator)
        await stream.aclose()
    assert engine.running == 0
