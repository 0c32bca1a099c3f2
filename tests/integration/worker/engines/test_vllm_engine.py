"""The vllm engine on the real SmolLM2-135M-Instruct (one engine for the
whole session). Greedy decoding of so small a model is fragile across
compiled and eager runs, so these tests check what holds for any output:
counts, finish reasons, the engine's own view of its sequences. The engine
fixture (max_num_seqs 8) is in tests/integration/worker/conftest.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from headrace.runtime.errors import InvalidArgument, Unimplemented
from services.worker.engines.base import (
    ChatTurn,
    Delta,
    Engine,
    FinishReason,
    GenerationRequest,
    Priority,
    Sampling,
)
from services.worker.engines.vllm_engine import VllmEngine, sampling_params

pytestmark = pytest.mark.slow

_ids = iter(range(1_000_000))


def request(
    prompt: str | None = "The capital of France is",
    *,
    messages: tuple[ChatTurn, ...] = (),
    priority: Priority = Priority.STANDARD,
    **sampling: object,
) -> GenerationRequest:
    return GenerationRequest(
        request_id=f"test-{next(_ids)}",
        model="smollm2@1",
        prompt=prompt,
        messages=messages,
        sampling=Sampling(**sampling),  # type: ignore[arg-type]
        priority=priority,
    )


async def collect(engine: VllmEngine, req: GenerationRequest) -> list[Delta]:
    return [delta async for delta in engine.generate(req)]


async def until(condition: Callable[[], bool], timeout_s: float) -> float:
    """Seconds until condition() holds; fails the test after timeout_s."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            pytest.fail(f"condition not met within {timeout_s} s")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


def tokenizer(engine: VllmEngine):  # type: ignore[no-untyped-def]
    return AutoTokenizer.from_pretrained(str(Path(engine.model)), local_files_only=True)


async def test_streams_real_tokens_with_usage(vllm_engine: VllmEngine) -> None:
    assert isinstance(vllm_engine, Engine)
    deltas = await collect(vllm_engine, request(max_tokens=12, ignore_eos=True, temperature=0.0))
    assert deltas[-1].finish_reason is FinishReason.LENGTH
    assert all(d.finish_reason is None for d in deltas[:-1])
    token_ids = [t for d in deltas for t in d.token_ids]
    assert len(token_ids) == 12 == deltas[-1].completion_tokens
    assert [d.completion_tokens for d in deltas] == sorted(d.completion_tokens for d in deltas)
    tok = tokenizer(vllm_engine)
    assert deltas[-1].prompt_tokens == len(tok("The capital of France is")["input_ids"])
    assert all(0 <= t < len(tok) for t in token_ids)
    # The streamed text is the detokenized stream of token ids.
    assert "".join(d.text for d in deltas) == tok.decode(token_ids, skip_special_tokens=True)


async def test_a_stop_string_finishes_with_stop(vllm_engine: VllmEngine) -> None:
    deltas = await collect(vllm_engine, request("Count: one two three four", max_tokens=64, stop=(" ",)))
    assert deltas[-1].finish_reason is FinishReason.STOP
    assert deltas[-1].completion_tokens < 64
    assert " " not in "".join(d.text for d in deltas)


async def test_repeated_prompt_prefix_hits_the_prefix_cache(vllm_engine: VllmEngine) -> None:
    # vLLM caches whole KV blocks, 128 tokens each on a CPU: ~330 tokens fill two.
    prompt = "Headrace feeds water to the mill wheel. " * 36
    first = await collect(vllm_engine, request(prompt, max_tokens=2))
    second = await collect(vllm_engine, request(prompt + "And then", max_tokens=2))
    assert first[-1].cached_prompt_tokens == 0
    assert 0 < second[-1].cached_prompt_tokens < second[-1].prompt_tokens


async def test_closing_the_stream_frees_the_sequence_within_a_second(vllm_engine: VllmEngine) -> None:
    stream = vllm_engine.generate(request(max_tokens=1500, ignore_eos=True))
    for _ in range(3):
        await stream.__anext__()
    await until(lambda: vllm_engine.stats().running == 1, 2.0)
    await stream.aclose()
    freed_in = await until(lambda: vllm_engine.stats().running == 0, 1.0)
    assert freed_in < 1.0
    assert vllm_engine.stats().kv_cache_usage == 0.0


async def test_cancelling_the_consumer_task_frees_the_sequence(vllm_engine: VllmEngine) -> None:
    async def consume() -> None:
        async for _ in vllm_engine.generate(request(max_tokens=1500, ignore_eos=True)):
            pass

    task = asyncio.create_task(consume())
    await until(lambda: vllm_engine.stats().running == 1, 5.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await until(lambda: vllm_engine.stats().running == 0, 1.0)


async def test_abort_by_id_ends_the_stream_with_abort(vllm_engine: VllmEngine) -> None:
    req = request(max_tokens=1500, ignore_eos=True)
    deltas: list[Delta] = []

    async def consume() -> None:
        async for delta in vllm_engine.generate(req):
            deltas.append(delta)

    task = asyncio.create_task(consume())
    await until(lambda: len(deltas) >= 3, 5.0)
    assert await vllm_engine.abort(req.request_id) is True
    await asyncio.wait_for(task, 2.0)
    assert deltas[-1].finish_reason is FinishReason.ABORT
    assert 3 <= deltas[-1].completion_tokens < 1500
    await until(lambda: vllm_engine.stats().running == 0, 1.0)
    assert await vllm_engine.abort(req.request_id) is False
    assert await vllm_engine.abort("never-seen") is False


async def test_a_batch_row_wanting_its_whole_answer_gets_one_output(vllm_engine: VllmEngine) -> None:
    # FINAL_ONLY: no per-token outputs for a row nobody streams.
    row = replace(request(max_tokens=12, ignore_eos=True, priority=Priority.BATCH), whole_answer=True)
    deltas = await collect(vllm_engine, row)
    assert len(deltas) == 1
    (whole,) = deltas
    assert whole.finish_reason is FinishReason.LENGTH
    assert len(whole.token_ids) == 12 == whole.completion_tokens
    assert whole.text == tokenizer(vllm_engine).decode(list(whole.token_ids), skip_special_tokens=True)
    # An online unary answer still streams: its deltas time the first token.
    online = replace(request(max_tokens=12, ignore_eos=True), whole_answer=True)
    assert len(await collect(vllm_engine, online)) > 1


async def test_an_aborted_whole_answer_batch_row_ends_with_abort(vllm_engine: VllmEngine) -> None:
    # How a preempted batch row ends: the worker needs its ABORT to retry it.
    row = replace(request(max_tokens=1500, ignore_eos=True, priority=Priority.BATCH), whole_answer=True)
    deltas: list[Delta] = []

    async def consume() -> None:
        async for delta in vllm_engine.generate(row):
            deltas.append(delta)

    task = asyncio.create_task(consume())
    await until(lambda: vllm_engine.stats().running >= 1, 5.0)
    await asyncio.sleep(0.3)
    assert await vllm_engine.abort(row.request_id) is True
    await asyncio.wait_for(task, 2.0)
    assert len(deltas) == 1 and deltas[0].finish_reason is FinishReason.ABORT
    await until(lambda: vllm_engine.stats().running == 0, 1.0)


async def test_abort_many_stops_the_named_rows_in_one_call(vllm_engine: VllmEngine) -> None:
    # How a preemption stops every batch row beyond the share at once.
    rows = [
        replace(request(max_tokens=1500, ignore_eos=True, priority=Priority.BATCH), whole_answer=True) for _ in range(3)
    ]
    kept = request(max_tokens=8, ignore_eos=True)
    ends: dict[str, FinishReason | None] = {}

    async def consume(req: GenerationRequest) -> None:
        async for delta in vllm_engine.generate(req):
            ends[req.request_id] = delta.finish_reason

    tasks = [asyncio.create_task(consume(r)) for r in rows]
    await until(lambda: vllm_engine.stats().running >= 3, 5.0)
    assert await vllm_engine.abort_many([r.request_id for r in rows] + ["never-seen"]) == 3
    await asyncio.wait_for(asyncio.gather(*tasks), 2.0)
    assert [ends[r.request_id] for r in rows] == [FinishReason.ABORT] * 3
    await consume(kept)
    assert ends[kept.request_id] is FinishReason.LENGTH
    assert await vllm_engine.abort_many([r.request_id for r in rows]) == 0


@pytest.mark.parametrize("turns", [0, 1, 3, 8, -1])
async def test_rows_aborted_on_their_way_into_the_engine_end_aborted(vllm_engine: VllmEngine, turns: int) -> None:
    # A preemption that comes while rows are still being rendered, or before
    # vLLM has registered them (a burst of batch rows under load): each must
    # end aborted, not run to its end holding its slot. `turns`: how far the
    # rows got (event-loop turns) when the abort came; -1: just past their
    # rendering, on their way into vLLM.
    rows = [
        replace(request(max_tokens=1500, ignore_eos=True, priority=Priority.BATCH), whole_answer=True) for _ in range(6)
    ]
    ends: dict[str, FinishReason | None] = {}

    async def consume(req: GenerationRequest) -> None:
        async for delta in vllm_engine.generate(req):
            ends[req.request_id] = delta.finish_reason

    tasks = [asyncio.create_task(consume(r)) for r in rows]
    for _ in range(turns):
        await asyncio.sleep(0)
    if turns < 0:
        await asyncio.sleep(0)
        while vllm_engine._rendering:
            await asyncio.sleep(0)
    assert await vllm_engine.abort_many([r.request_id for r in rows]) == (6 if turns else 0)
    if not turns:
        # Not begun: nothing of them here yet to abort. Let them begin, then.
        await asyncio.sleep(0)
        assert await vllm_engine.abort_many([r.request_id for r in rows]) == 6
    await asyncio.wait_for(asyncio.gather(*tasks), 10.0)
    assert [ends[r.request_id] for r in rows] == [FinishReason.ABORT] * 6
    await until(lambda: vllm_engine.stats().running == 0, 2.0)
    assert not vllm_engine._rendering and not vllm_engine._aborted_rendering


async def test_chat_messages_go_through_the_chat_template(vllm_engine: VllmEngine) -> None:
    messages = (ChatTurn("system", "You answer briefly."), ChatTurn("user", "What is two plus two?"))
    deltas = await collect(vllm_engine, request(None, messages=messages, max_tokens=24))
    expected = tokenizer(vllm_engine).apply_chat_template(
        [{"role": m.role, "content": m.content} for m in messages], add_generation_prompt=True, tokenize=True
    )
    expected_ids = expected if isinstance(expected, list) else expected["input_ids"]
    assert expected_ids.count(expected_ids[0]) == 3  # <|im_start|> opens each of the three turns
    # Exactly the template's tokens: no second BOS, the assistant turn opened.
    assert deltas[-1].prompt_tokens == len(expected_ids)
    assert deltas[-1].completion_tokens >= 1
    assert deltas[-1].finish_reason in (FinishReason.STOP, FinishReason.LENGTH)


async def test_priority_orders_the_waiting_queue(vllm_engine: VllmEngine) -> None:
    capacity = vllm_engine.stats().capacity
    first_token_at: dict[str, float] = {}

    async def run(name: str, req: GenerationRequest) -> None:
        async for _ in vllm_engine.generate(req):
            first_token_at.setdefault(name, time.monotonic())

    fillers = [
        asyncio.create_task(run(f"filler{i}", request(max_tokens=48, ignore_eos=True, priority=Priority.BATCH)))
        for i in range(capacity)
    ]
    await until(lambda: vllm_engine.stats().running == capacity, 10.0)
    # Arrives first, lower priority.
    batch = asyncio.create_task(run("batch", request(max_tokens=4, ignore_eos=True, priority=Priority.BATCH)))
    await until(lambda: vllm_engine.stats().waiting == 1, 2.0)
    interactive = asyncio.create_task(
        run("interactive", request(max_tokens=4, ignore_eos=True, priority=Priority.INTERACTIVE))
    )
    await until(lambda: vllm_engine.stats().waiting == 2 or "interactive" in first_token_at, 2.0)
    await asyncio.wait_for(asyncio.gather(*fillers, batch, interactive), 60)
    assert first_token_at["interactive"] < first_token_at["batch"]


async def test_invalid_requests_are_invalid_arguments(vllm_engine: VllmEngine) -> None:
    with pytest.raises(InvalidArgument, match="max_tokens"):
        await collect(vllm_engine, request(max_tokens=5000))
    with pytest.raises(InvalidArgument, match="temperature"):
        await collect(vllm_engine, request(temperature=-1.0))
    with pytest.raises(InvalidArgument):
        await collect(vllm_engine, request("word " * 3000, max_tokens=4))
    with pytest.raises(Unimplemented):
        await vllm_engine.embed(["no"])
    assert vllm_engine.stats().running == 0


async def test_a_seed_makes_sampling_repeatable(vllm_engine: VllmEngine) -> None:
    def tokens(deltas: list[Delta]) -> list[int]:
        return [t for d in deltas for t in d.token_ids]

    one = await collect(vllm_engine, request(max_tokens=16, temperature=1.0, seed=7, ignore_eos=True))
    two = await collect(vllm_engine, request(max_tokens=16, temperature=1.0, seed=7, ignore_eos=True))
    assert tokens(one) == tokens(two)


async def test_score_gives_each_tokens_logprob_and_rank(vllm_engine: VllmEngine) -> None:
    tok = tokenizer(vllm_engine)
    text = "The river turns the wheel, and the wheel turns the stones."
    scores = await vllm_engine.score(request(text))
    # Every prompt token after the first, in order.
    assert [s.token_id for s in scores] == tok(text)["input_ids"][1:]
    assert all(s.logprob <= 0 and s.rank >= 1 for s in scores)
    # A garbled text is less likely than the sentence.
    garbled = await vllm_engine.score(request("stones wheel the, turns river. the and The wheel the turns"))
    assert sum(s.logprob for s in garbled) / len(garbled) < sum(s.logprob for s in scores) / len(scores) - 1

    # A continuation: the engine's own greedy answer scores rank 1 almost
    # everywhere (prefill and decode round differently, so not always).
    colors = (ChatTurn(role="user", content="Name three colors."),)
    chat = request(None, messages=colors, max_tokens=16, temperature=0.0)
    answer = [t for d in await collect(vllm_engine, chat) for t in d.token_ids]
    ranked = await vllm_engine.score(chat, continuation=answer)
    assert [s.token_id for s in ranked] == answer
    assert sum(s.rank == 1 for s in ranked) >= 0.8 * len(answer)

    with pytest.raises(InvalidArgument, match="maximum context length"):
        await vllm_engine.score(request("word " * 3000))
    with pytest.raises(InvalidArgument, match="do not fit"):
        await vllm_engine.score(chat, continuation=answer * 200)


async def test_stats_and_health(vllm_engine: VllmEngine) -> None:
    await collect(vllm_engine, request(max_tokens=8, ignore_eos=True))
    stats = vllm_engine.stats()
    assert stats.capacity == 8
    assert stats.running == 0 and stats.waiting == 0
    assert stats.tokens_per_second > 0
    assert await vllm_engine.health()


def test_sampling_fields_map_to_vllm() -> None:
    params = sampling_params(
        Sampling(
            temperature=0.5,
            top_p=0.9,
            top_k=20,
            max_tokens=30,
            stop=("\n\n",),
            seed=3,
            presence_penalty=0.1,
            frequency_penalty=0.2,
            repetition_penalty=1.1,
            ignore_eos=True,
            min_tokens=5,
        ),
        prompt_len=10,
        max_model_len=100,
        default_max_tokens=256,
        model_defaults={"temperature": 0.7, "top_k": 50},
    )
    assert (params.temperature, params.top_p, params.top_k, params.max_tokens) == (0.5, 0.9, 20, 30)
    assert params.stop == ["\n\n"] and params.seed == 3 and params.min_tokens == 5 and params.ignore_eos
    assert (params.presence_penalty, params.frequency_penalty, params.repetition_penalty) == (0.1, 0.2, 1.1)
    defaults = sampling_params(
        Sampling(), prompt_len=10, max_model_len=100, default_max_tokens=256, model_defaults={"top_k": 50}
    )
    # The model's defaults fill unset fields; max_tokens is cut to the context left.
    assert defaults.top_k == 50 and defaults.max_tokens == 90
