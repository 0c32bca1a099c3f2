"""The openai engine against a real vLLM OpenAI server on loopback
(`python -m vllm.entrypoints.openai.api_server`, SmolLM2-135M-Instruct,
an API key required). Abort is checked on the upstream, by its
`vllm:num_requests_running` gauge, not by what the client sees."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from headrace.runtime.engine_settings import OpenAIEngineSettings
from headrace.runtime.errors import FailedPrecondition, InvalidArgument, Unauthenticated, Unavailable, Unimplemented
from services.worker.engines.base import ChatTurn, Delta, FinishReason, GenerationRequest, Sampling
from services.worker.engines.openai_upstream import OpenAIEngine
from tests.integration.worker.engines.conftest import VllmServer, free_port

pytestmark = pytest.mark.slow

PROMPT = "The capital of France is"
MESSAGES = (ChatTurn("user", "Name one colour."),)
LONG = Sampling(max_tokens=1000, ignore_eos=True)


def settings(server: VllmServer, **overrides: Any) -> OpenAIEngineSettings:
    return OpenAIEngineSettings(base_url=server.base_url, api_key_env=VllmServer.KEY_ENV, **overrides)


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def engine(vllm_server: VllmServer) -> AsyncIterator[OpenAIEngine]:
    engine = OpenAIEngine(settings(vllm_server))
    await engine.start()
    yield engine
    await engine.close()


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def whole_engine(vllm_server: VllmServer) -> AsyncIterator[OpenAIEngine]:
    engine = OpenAIEngine(settings(vllm_server, stream=False))
    await engine.start()
    yield engine
    await engine.close()


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir, local_files_only=True)


async def collect(engine: OpenAIEngine, request: GenerationRequest) -> list[Delta]:
    return [delta async for delta in engine.generate(request)]


async def running_upstream_becomes(server: VllmServer, count: float, within_s: float = 10.0) -> float:
    """Seconds until the upstream runs `count` requests; fails after within_s.
    A LONG request needs 20 s or more here, so 10 s still tells an abort
    from a request that ran to its end (vLLM notices a closed connection at
    its next output, which a loaded CI box can delay by seconds)."""
    started = time.monotonic()
    while (seen := server.metric("vllm:num_requests_running")) != count:
        if time.monotonic() - started > within_s:
            pytest.fail(f"upstream still runs {seen:g} requests after {within_s} s (expected {count:g})")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def stats_become(engine: OpenAIEngine, *, running: int, waiting: int, within_s: float = 10.0) -> None:
    started = time.monotonic()
    while (seen := (engine.stats().running, engine.stats().waiting)) != (running, waiting):
        if time.monotonic() - started > within_s:
            pytest.fail(f"engine runs/waits {seen} after {within_s} s (expected {(running, waiting)})")
        await asyncio.sleep(0.05)


async def test_start_takes_the_one_model_the_upstream_serves(engine: OpenAIEngine) -> None:
    assert engine.model == "smollm2"
    assert await engine.health()


async def test_streams_a_prompt_with_usage(engine: OpenAIEngine, tokenizer: Any) -> None:
    deltas = await collect(engine, GenerationRequest("oa-prompt", "smollm2@1", PROMPT, sampling=Sampling(max_tokens=8)))
    *tokens, last = deltas
    assert len(tokens) >= 6  # streamed, not one lump
    assert "".join(d.text for d in tokens).strip()
    assert last.finish_reason is FinishReason.LENGTH
    assert last.completion_tokens == 8
    assert last.prompt_tokens == len(tokenizer(PROMPT).input_ids)


async def test_streams_chat_with_usage(engine: OpenAIEngine, tokenizer: Any) -> None:
    request = GenerationRequest("oa-chat", "smollm2@1", None, messages=MESSAGES, sampling=Sampling(max_tokens=32))
    deltas = await collect(engine, request)
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Name one colour."}], tokenize=False, add_generation_prompt=True
    )
    assert deltas[-1].prompt_tokens == len(tokenizer(rendered).input_ids)
    assert deltas[-1].finish_reason in (FinishReason.STOP, FinishReason.LENGTH)
    assert 0 < deltas[-1].completion_tokens <= 32
    assert "".join(d.text for d in deltas).strip()


@pytest.mark.parametrize(("prompt", "messages"), [(PROMPT, ()), (None, MESSAGES)], ids=["prompt", "chat"])
async def test_whole_answer_equals_the_streamed_one(
    engine: OpenAIEngine, whole_engine: OpenAIEngine, prompt: str | None, messages: tuple[ChatTurn, ...]
) -> None:
    sampling = Sampling(max_tokens=12, temperature=0.0)
    streamed = await collect(engine, GenerationRequest("oa-s", "smollm2@1", prompt, messages, sampling))
    whole = await collect(whole_engine, GenerationRequest("oa-w", "smollm2@1", prompt, messages, sampling))
    assert len(whole) == 1  # the text with the finish: one piece
    assert whole[0].text == "".join(d.text for d in streamed)
    assert (whole[-1].prompt_tokens, whole[-1].completion_tokens, whole[-1].finish_reason) == (
        streamed[-1].prompt_tokens,
        streamed[-1].completion_tokens,
        streamed[-1].finish_reason,
    )


async def test_closing_the_stream_aborts_the_upstream_request(engine: OpenAIEngine, vllm_server: VllmServer) -> None:
    stream = engine.generate(GenerationRequest("oa-close", "smollm2@1", "Tell me a long story.", sampling=LONG))
    await anext(stream)
    await anext(stream)
    assert vllm_server.metric("vllm:num_requests_running") == 1
    await stream.aclose()
    await running_upstream_becomes(vllm_server, 0)
    assert engine.stats().running == 0


async def test_abort_by_request_id_frees_the_upstream(engine: OpenAIEngine, vllm_server: VllmServer) -> None:
    stream = engine.generate(GenerationRequest("oa-abort", "smollm2@1", "Tell me a long story.", sampling=LONG))
    seen = [await anext(stream)]
    assert vllm_server.metric("vllm:num_requests_running") == 1
    assert await engine.abort("oa-abort")
    seen += [delta async for delta in stream]
    assert seen[-1].finish_reason is FinishReason.ABORT
    assert seen[-1].completion_tokens < 1000
    await running_upstream_becomes(vllm_server, 0)
    assert not await engine.abort("oa-abort")


async def test_whole_answer_abort_frees_the_upstream(whole_engine: OpenAIEngine, vllm_server: VllmServer) -> None:
    request = GenerationRequest("oa-whole-abort", "smollm2@1", "Tell me a long story.", sampling=LONG)
    task = asyncio.create_task(collect(whole_engine, request))
    await running_upstream_becomes(vllm_server, 1)
    assert await whole_engine.abort("oa-whole-abort")
    deltas = await task
    assert deltas == [Delta("", finish_reason=FinishReason.ABORT)]
    await running_upstream_becomes(vllm_server, 0)


async def test_requests_over_max_concurrency_wait_in_the_engine(vllm_server: VllmServer) -> None:
    engine = OpenAIEngine(settings(vllm_server, max_concurrency=1))
    await engine.start()
    try:
        requests = [GenerationRequest(f"oa-bound-{i}", "smollm2@1", PROMPT, sampling=LONG) for i in range(2)]
        tasks = [asyncio.create_task(collect(engine, request)) for request in requests]
        await running_upstream_becomes(vllm_server, 1)
        assert (engine.stats().running, engine.stats().waiting) == (1, 1)
        await asyncio.sleep(0.5)
        # Only one reaches the upstream at a time.
        assert vllm_server.metric("vllm:num_requests_running") == 1
        assert await engine.abort("oa-bound-0")
        first = await tasks[0]
        assert first[-1].finish_reason is FinishReason.ABORT
        # The waiting one goes up in its place.
        await stats_become(engine, running=1, waiting=0)
        assert await engine.abort("oa-bound-1")
        second = await tasks[1]
        assert second[-1].finish_reason is FinishReason.ABORT
        assert engine.stats().tokens_per_second > 0
        await running_upstream_becomes(vllm_server, 0)
    finally:
        await engine.close()


async def test_request_the_upstream_refuses_is_invalid_argument(engine: OpenAIEngine) -> None:
    # More tokens than the server's context (--max-model-len 2048): a 400.
    request = GenerationRequest("oa-too-long", "smollm2@1", PROMPT, sampling=Sampling(max_tokens=5000))
    with pytest.raises(InvalidArgument, match=r"HTTP 400"):
        await collect(engine, request)
    assert engine.stats().running == 0


async def test_wrong_api_key_is_unauthenticated(vllm_server: VllmServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEADRACE_TEST_WRONG_KEY", "not-the-key")
    engine = OpenAIEngine(OpenAIEngineSettings(base_url=vllm_server.base_url, api_key_env="HEADRACE_TEST_WRONG_KEY"))
    with pytest.raises(Unauthenticated, match="HTTP 401"):
        await engine.start()
    await engine.close()


async def test_unknown_model_fails_start_naming_what_is_served(vllm_server: VllmServer) -> None:
    engine = OpenAIEngine(settings(vllm_server, model="gpt-9"))
    with pytest.raises(FailedPrecondition, match="does not serve model 'gpt-9'; it serves: smollm2"):
        await engine.start()
    await engine.close()


async def test_no_upstream_fails_start_with_unavailable() -> None:
    base_url = f"http://127.0.0.1:{free_port()}/v1"
    engine = OpenAIEngine(OpenAIEngineSettings(base_url=base_url, connect_timeout_s=1))
    with pytest.raises(Unavailable, match=f"openai upstream {base_url} \\(listing models\\) is unreachable"):
        await engine.start()
    assert not await engine.health()
    await engine.close()


async def test_embed_is_unimplemented(engine: OpenAIEngine) -> None:
    with pytest.raises(Unimplemented):
        await engine.embed(["x"])
