import asyncio
from collections.abc import AsyncGenerator

import pytest

from headrace.runtime.engine_settings import SyntheticEngineSettings
from headrace.runtime.errors import Internal, Unavailable
from services.worker.engines.base import Delta, Engine, FinishReason, GenerationRequest, Sampling
from services.worker.engines.synthetic import SyntheticEngine


def req(request_id: str = "r", max_tokens: int = 5, prompt: str = "a b c") -> GenerationRequest:
    return GenerationRequest(
        request_id=request_id, model="m@1", prompt=prompt, sampling=Sampling(max_tokens=max_tokens)
    )


async def test_streams_max_tokens_then_finishes_with_usage() -> None:
    engine = SyntheticEngine(SyntheticEngineSettings(ttft_ms=0, tokens_per_s=10_000))
    assert isinstance(engine, Engine)
    deltas = [d async for d in engine.generate(req(max_tokens=5))]
    assert len(deltas) == 5
    assert deltas[-1].finish_reason is FinishReason.LENGTH
    assert deltas[-1].completion_tokens == 5 and deltas[-1].prompt_tokens == 3
    assert all(d.finish_reason is None for d in deltas[:-1])
    again = [d async for d in engine.generate(req(max_tokens=5))]
    assert [d.text for d in again] == [d.text for d in deltas]  # deterministic per prompt


async def test_closing_the_stream_frees_the_sequence() -> None:
    engine = SyntheticEngine(SyntheticEngineSettings(ttft_ms=0, tokens_per_s=100))
    stream = engine.generate(req(max_tokens=1000))
    await anext(stream)
    assert engine.stats().running == 1
    await stream.aclose()
    assert engine.stats().running == 0


async def test_abort_ends_the_stream_with_abort() -> None:
    engine = SyntheticEngine(SyntheticEngineSettings(ttft_ms=0, tokens_per_s=200))
    stream = engine.generate(req("x", max_tokens=1000))
    await anext(stream)
    assert await engine.abort("x")
    assert not await engine.abort("unknown")
    rest = [d async for d in stream]
    assert rest[-1].finish_reason is FinishReason.ABORT
    assert engine.stats().running == 0


async def one_running_one_waiting(
    max_tokens: int,
) -> tuple[SyntheticEngine, AsyncGenerator[Delta, None], AsyncGenerator[Delta, None], asyncio.Future[Delta]]:
    """An engine of one place: request "1" runs, "2" waits for the place
    (its first delta is the future)."""
    engine = SyntheticEngine(SyntheticEngineSettings(ttft_ms=0, tokens_per_s=50, max_concurrency=1))
    first = engine.generate(req("1", max_tokens=100))
    await anext(first)
    second = engine.generate(req("2", max_tokens=max_tokens))
    waiting = asyncio.ensure_future(anext(second))
    await asyncio.sleep(0.02)
    assert engine.stats().waiting == 1 and not waiting.done()
    return engine, first, second, waiting


async def test_concurrency_limit_makes_requests_wait() -> None:
    _engine, first, second, waiting = await one_running_one_waiting(max_tokens=1)
    await first.aclose()
    await waiting
    await second.aclose()


async def test_fault_injection() -> None:
    failing = SyntheticEngine(SyntheticEngineSettings(ttft_ms=0, fail_rate=1.0))
    with pytest.raises(Unavailable, match="injected failure before the first token"):
        await anext(failing.generate(req()))
    assert failing.stats().running == 0
    midway = SyntheticEngine(SyntheticEngineSettings(ttft_ms=0, tokens_per_s=10_000, fail_after_tokens=2))
    got = []
    with pytest.raises(Internal, match="after 2 tokens"):
        async for delta in midway.generate(req(max_tokens=10)):
            got.append(delta)
    assert len(got) == 2


async def test_embeddings_are_deterministic_unit_vectors() -> None:
    engine = SyntheticEngine(SyntheticEngineSettings(embedding_dim=16))
    a, b, a2 = await engine.embed(["a", "b", "a"])
    assert len(a) == 16 and a == a2 and a != b
    assert abs(sum(v * v for v in a) - 1.0) < 1e-9


async def test_abort_reaches_a_request_waiting_for_a_place() -> None:
    # As vLLM's abort reaches its waiting queue: a batch row leased ahead
    # and preempted before it ran leaves without running.
    engine, first, second, waiting = await one_running_one_waiting(max_tokens=5)
    assert await engine.abort("2")
    await first.aclose()
    aborted = await waiting
    assert aborted.finish_reason is FinishReason.ABORT and aborted.completion_tokens == 0
    assert [d async for d in second] == []
    assert engine.stats().running == 0
