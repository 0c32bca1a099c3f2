"""The openai engine against a fake upstream (httpx2.MockTransport under the
real openai client): what it sends, how it reads streams, and how upstream
errors map to Headrace errors."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx2
import pytest

from headrace.runtime.config import LimitSettings
from headrace.runtime.engine_settings import OpenAIEngineSettings
from headrace.runtime.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    HeadraceError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from headrace.v1 import scheduler_pb2
from services.worker.engines.base import ChatTurn, Delta, FinishReason, GenerationRequest, Sampling
from services.worker.engines.openai_upstream import OpenAIEngine
from services.worker.load_reporter import LoadReporter

BASE_URL = "http://upstream.test/v1"
Handler = Callable[[httpx2.Request], httpx2.Response]


def models(*names: str) -> httpx2.Response:
    return httpx2.Response(200, json={"object": "list", "data": [{"id": n, "object": "model"} for n in names]})


def sse(*events: dict[str, Any]) -> httpx2.Response:
    body = "".join(f"data: {json.dumps(event)}\n\n" for event in events) + "data: [DONE]\n\n"
    return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body.encode())


def chat_chunk(content: str | None, finish: str | None = None) -> dict[str, Any]:
    delta = {} if content is None else {"content": content}
    return {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def usage_chunk(prompt: int, completion: int, cached: int = 0) -> dict[str, Any]:
    return {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "m",
        "choices": [],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
        },
    }


class FakeUpstream:
    """Serves /models, records requests, answers generation with `answer`."""

    def __init__(self, answer: Handler, served: tuple[str, ...] = ("m",)) -> None:
        self.answer = answer
        self.served = served
        self.requests: list[httpx2.Request] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        if request.url.path.endswith("/models"):
            return models(*self.served)
        return self.answer(request)

    def body(self, index: int = -1) -> dict[str, Any]:
        return dict(json.loads(self.requests[index].content))


async def started(upstream: Handler, **settings: Any) -> OpenAIEngine:
    engine = OpenAIEngine(
        OpenAIEngineSettings(base_url=BASE_URL, **settings),
        http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(upstream)),
    )
    await engine.start()
    return engine


async def collect(engine: OpenAIEngine, request: GenerationRequest) -> list[Delta]:
    return [delta async for delta in engine.generate(request)]


CHAT = GenerationRequest("r1", "m@1", None, messages=(ChatTurn("user", "hi"),), sampling=Sampling(max_tokens=5))
PROMPT = GenerationRequest("r2", "m@1", "Once", sampling=Sampling(max_tokens=5, top_k=3, ignore_eos=True))


async def test_chat_stream_is_read_into_deltas_with_usage() -> None:
    upstream = FakeUpstream(
        lambda _: sse(
            chat_chunk(""), chat_chunk("Hel"), chat_chunk("lo"), chat_chunk(None, "stop"), usage_chunk(9, 2, cached=4)
        )
    )
    engine = await started(upstream)
    deltas = await collect(engine, CHAT)
    assert [d.text for d in deltas] == ["Hel", "lo", ""]
    assert deltas[-1] == Delta(
        "", finish_reason=FinishReason.STOP, prompt_tokens=9, completion_tokens=2, cached_prompt_tokens=4
    )
    body = upstream.body()
    assert upstream.requests[-1].url.path == "/v1/chat/completions"
    assert body["messages"] == [{"role": "user", "content": "hi"}]
    assert body["model"] == "m"
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["max_completion_tokens"] == 5
    assert upstream.requests[-1].headers["x-request-id"] == "r1"
    await engine.close()


async def test_prompt_goes_to_completions_with_vllm_extras() -> None:
    completion = {
        "id": "c",
        "object": "text_completion",
        "created": 0,
        "model": "m",
        "choices": [{"index": 0, "text": " upon", "finish_reason": "length", "logprobs": None}],
    }
    upstream = FakeUpstream(lambda _: sse(completion, usage_chunk(1, 5) | {"object": "text_completion"}))
    engine = await started(upstream)
    deltas = await collect(engine, PROMPT)
    assert [d.text for d in deltas] == [" upon", ""]
    assert (deltas[-1].finish_reason, deltas[-1].completion_tokens) == (FinishReason.LENGTH, 5)
    body = upstream.body()
    assert upstream.requests[-1].url.path == "/v1/completions"
    assert (body["prompt"], body["max_tokens"], body["top_k"], body["ignore_eos"]) == ("Once", 5, 3, True)
    await engine.close()


@pytest.mark.parametrize(
    ("upstream_reason", "reason"),
    [("content_filter", FinishReason.STOP), ("abort", FinishReason.ABORT), ("tool_calls", FinishReason.STOP)],
)
async def test_finish_reasons_are_mapped(upstream_reason: str, reason: FinishReason) -> None:
    engine = await started(FakeUpstream(lambda _: sse(chat_chunk("x"), chat_chunk(None, upstream_reason))))
    deltas = await collect(engine, CHAT)
    assert deltas[-1].finish_reason is reason
    # No usage chunk: the count falls back to the chunks seen.
    assert deltas[-1].completion_tokens == 1
    await engine.close()


async def test_whole_answers_when_not_streaming() -> None:
    answer = {
        "id": "c",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi!"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }
    upstream = FakeUpstream(lambda _: httpx2.Response(200, json=answer))
    engine = await started(upstream, stream=False)
    deltas = await collect(engine, CHAT)
    # One piece: the text with the finish (no first token apart from the last).
    assert deltas == [Delta("Hi!", finish_reason=FinishReason.STOP, prompt_tokens=3, completion_tokens=2)]
    assert "stream" not in upstream.body()
    await engine.close()


def error(status: int, headers: dict[str, str] | None = None) -> Handler:
    body = {"error": {"message": f"upstream says {status}", "type": "x", "code": None}}
    return lambda _: httpx2.Response(status, headers=headers or {}, json=body)


@pytest.mark.parametrize(
    ("status", "headers", "expected", "retry_after"),
    [
        (400, {}, InvalidArgument, None),
        (401, {}, Unauthenticated, None),
        (403, {}, PermissionDenied, None),
        (404, {}, NotFound, None),
        (408, {}, DeadlineExceeded, None),
        (409, {}, FailedPrecondition, None),
        (422, {}, InvalidArgument, None),
        (429, {"retry-after": "7"}, ResourceExhausted, 7.0),
        (429, {"retry-after-ms": "1500"}, ResourceExhausted, 1.5),
        (429, {}, ResourceExhausted, None),
        (500, {}, Unavailable, None),
        (503, {"retry-after": "2"}, Unavailable, 2.0),
    ],
)
async def test_upstream_errors_map_to_headrace_errors(
    status: int, headers: dict[str, str], expected: type[HeadraceError], retry_after: float | None
) -> None:
    engine = await started(FakeUpstream(error(status, headers)))
    with pytest.raises(expected) as caught:
        await collect(engine, CHAT)
    assert type(caught.value) is expected
    assert f"openai upstream {BASE_URL} (generate): HTTP {status}: upstream says {status}" in str(caught.value)
    assert caught.value.retry_after_s == retry_after
    assert engine.stats().running == 0
    await engine.close()


@pytest.mark.parametrize(
    ("failure", "expected", "text"),
    [
        (httpx2.ConnectError("connection refused"), Unavailable, "is unreachable"),
        (httpx2.ReadTimeout("slow"), DeadlineExceeded, "timed out"),
    ],
)
async def test_transport_failures_map(failure: Exception, expected: type[HeadraceError], text: str) -> None:
    def fail(request: httpx2.Request) -> httpx2.Response:
        raise failure

    engine = await started(FakeUpstream(fail))
    with pytest.raises(expected, match=text):
        await collect(engine, CHAT)
    await engine.close()


async def test_unreachable_upstream_fails_start_with_unavailable() -> None:
    def refuse(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("connection refused")

    engine = OpenAIEngine(
        OpenAIEngineSettings(base_url=BASE_URL),
        http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(refuse)),
    )
    with pytest.raises(Unavailable, match=f"openai upstream {BASE_URL} \\(listing models\\) is unreachable"):
        await engine.start()
    # A start that failed leaves the engine unhealthy (the probe is refused too).
    assert not await engine.health()
    await engine.close()


async def test_api_key_comes_from_the_named_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_UPSTREAM_KEY", "sk-test-123")
    upstream = FakeUpstream(lambda _: sse(chat_chunk("x", "stop")))
    engine = await started(upstream, api_key_env="TEST_UPSTREAM_KEY")
    await collect(engine, CHAT)
    assert {r.headers["authorization"] for r in upstream.requests} == {"Bearer sk-test-123"}
    await engine.close()


async def test_unset_key_variable_fails_start_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_UPSTREAM_KEY", raising=False)
    with pytest.raises(FailedPrecondition, match="TEST_UPSTREAM_KEY"):
        await started(FakeUpstream(error(500)), api_key_env="TEST_UPSTREAM_KEY")


async def test_model_is_picked_or_checked_at_start() -> None:
    engine = await started(FakeUpstream(error(500), served=("only",)))
    assert engine.model == "only"
    await engine.close()
    with pytest.raises(FailedPrecondition, match="serves 2 models \\(a, b\\); set the engine's `model`"):
        await started(FakeUpstream(error(500), served=("a", "b")))
    with pytest.raises(FailedPrecondition, match="does not serve model 'c'; it serves: a, b"):
        await started(FakeUpstream(error(500), served=("a", "b")), model="c")


async def test_upstream_without_a_model_list_takes_the_configured_model() -> None:
    def no_list(request: httpx2.Request) -> httpx2.Response:
        return error(404)(request)

    engine = await started(no_list, model="given")
    assert engine.model == "given"
    await engine.close()
    with pytest.raises(NotFound):
        await started(no_list)


async def test_abort_of_an_unknown_request_is_false() -> None:
    engine = await started(FakeUpstream(error(500)))
    assert not await engine.abort("nope")
    await engine.close()


class StallingStream(httpx2.AsyncByteStream):
    """An SSE body that sends one chunk, then nothing until it is closed."""

    def __init__(self) -> None:
        self.closed = asyncio.Event()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield f"data: {json.dumps(chat_chunk('Once'))}\n\n".encode()
        await asyncio.Event().wait()

    async def aclose(self) -> None:
        self.closed.set()


def stalling(body: StallingStream) -> Handler:
    return lambda _: httpx2.Response(200, headers={"content-type": "text/event-stream"}, stream=body)


async def test_abort_while_the_upstream_is_silent_ends_the_stream_and_closes_the_response() -> None:
    body = StallingStream()
    engine = await started(FakeUpstream(stalling(body)))
    stream = engine.generate(CHAT)
    assert (await anext(stream)).text == "Once"
    pending = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0.05)
    assert not pending.done() and engine.stats().running == 1
    assert await engine.abort("r1")
    last = await asyncio.wait_for(pending, 5)
    assert last.finish_reason is FinishReason.ABORT
    assert body.closed.is_set()
    with pytest.raises(StopAsyncIteration):
        await anext(stream)
    assert engine.stats().running == 0 and not await engine.abort("r1")
    await engine.close()


async def test_a_cancelled_caller_is_cancelled_not_aborted() -> None:
    body = StallingStream()
    engine = await started(FakeUpstream(stalling(body)))

    async def consume() -> list[Delta]:
        return [delta async for delta in engine.generate(CHAT)]

    task = asyncio.ensure_future(consume())
    await asyncio.sleep(0.05)
    # Abort and cancellation together: the caller's cancellation wins.
    assert await engine.abort("r1")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert body.closed.is_set()
    assert engine.stats().running == 0
    await engine.close()


def model_list_calls(upstream: FakeUpstream) -> int:
    return sum(1 for request in upstream.requests if request.url.path.endswith("/models"))


async def test_load_reports_do_not_ask_the_upstream_for_its_models() -> None:
    upstream = FakeUpstream(lambda _: sse(chat_chunk("Hi"), chat_chunk(None, "stop"), usage_chunk(1, 1)))
    engine = await started(upstream)
    assert model_list_calls(upstream) == 1  # at start, to pick the model
    reporter = LoadReporter(
        scheduler_targets=[],
        worker=scheduler_pb2.WorkerInfo(worker_id="w"),
        engine=engine,
        limits=LimitSettings(),
        identity=None,
        interval_s=0.001,
    )
    reports = reporter._reports()
    for _ in range(5):
        assert (await anext(reports)).load.healthy
        await collect(engine, CHAT)
    await reports.aclose()  # type: ignore[attr-defined]
    # Five load reports (and requests) later: still the one call at start.
    assert model_list_calls(upstream) == 1
    await engine.close()


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FlakyUpstream:
    """Answers everything, or (down) refuses every connection; a 400 on request."""

    def __init__(self) -> None:
        self.down = False
        self.bad_request = False
        self.model_lists = 0

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        listing = request.url.path.endswith("/models")
        self.model_lists += listing
        if self.down:
            raise httpx2.ConnectError("connection refused")
        if listing:
            return models("m")
        if self.bad_request:
            return error(400)(request)
        return sse(chat_chunk("Hi"), chat_chunk(None, "stop"), usage_chunk(1, 1))


async def test_a_failure_makes_health_ask_the_upstream_then_back_off() -> None:
    upstream = FlakyUpstream()
    clock = FakeClock()
    engine = OpenAIEngine(
        OpenAIEngineSettings(base_url=BASE_URL),
        http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(upstream)),
        clock=clock,
    )
    await engine.start()
    # A client error says nothing about the upstream being down: no probe.
    upstream.bad_request = True
    with pytest.raises(InvalidArgument):
        await collect(engine, CHAT)
    assert await engine.health() and upstream.model_lists == 1
    upstream.down = True
    with pytest.raises(Unavailable):
        await collect(engine, CHAT)
    # The next check asks at once, then no more often than the backoff (1 s, then 2 s).
    assert not await engine.health() and upstream.model_lists == 2
    assert not await engine.health() and upstream.model_lists == 2
    clock.now += 1.0
    assert not await engine.health() and upstream.model_lists == 3
    clock.now += 1.0
    assert not await engine.health() and upstream.model_lists == 3
    clock.now += 1.0
    assert not await engine.health() and upstream.model_lists == 4
    upstream.down, upstream.bad_request = False, False
    clock.now += 4.0
    assert await engine.health() and upstream.model_lists == 5
    # Healthy again: back to asking nothing.
    assert await engine.health() and upstream.model_lists == 5
    assert len(await collect(engine, CHAT)) == 2
    await engine.close()


async def test_an_upstream_without_a_model_list_recovers_from_a_failure() -> None:
    served = {"down": False}

    def no_list(request: httpx2.Request) -> httpx2.Response:
        if served["down"]:
            raise httpx2.ConnectError("connection refused")
        if request.url.path.endswith("/models"):
            return httpx2.Response(404, json={"error": {"message": "no such route"}})
        return sse(chat_chunk("Hi"), chat_chunk(None, "stop"), usage_chunk(1, 1))

    engine = await started(no_list, model="m")
    served["down"] = True
    with pytest.raises(Unavailable):
        await collect(engine, CHAT)
    served["down"] = False
    # The 404 is an answer: the upstream is up.
    assert await engine.health()
    await engine.close()


async def test_a_whole_answer_request_is_one_unary_upstream_call() -> None:
    answer = {
        "id": "c",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi!"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }
    upstream = FakeUpstream(lambda _: httpx2.Response(200, json=answer))
    engine = await started(upstream)  # a streaming engine
    deltas = await collect(engine, dataclasses.replace(CHAT, whole_answer=True))
    assert [d.text for d in deltas] == ["Hi!"]
    assert deltas[-1].finish_reason is FinishReason.STOP and deltas[-1].completion_tokens == 2
    assert "stream" not in upstream.body() and "stream_options" not in upstream.body()
    await engine.close()


async def test_max_retries_retries_a_5xx_before_the_response_starts() -> None:
    answers = iter([error(503, {"retry-after-ms": "10"}), error(503, {"retry-after-ms": "10"})])

    def flaky(request: httpx2.Request) -> httpx2.Response:
        respond = next(answers, None)
        return respond(request) if respond else sse(chat_chunk("ok"), chat_chunk(None, "stop"))

    engine = await started(FakeUpstream(flaky), max_retries=2)
    assert [d.text for d in await collect(engine, CHAT)] == ["ok", ""]
    await engine.close()
    answers = iter([error(503), error(503)])
    engine = await started(FakeUpstream(flaky), max_retries=0)
    with pytest.raises(Unavailable, match="HTTP 503: upstream says 503"):
        await collect(engine, CHAT)
    await engine.close()


async def test_an_error_event_in_the_stream_ends_it_with_unavailable() -> None:
    upstream = FakeUpstream(lambda _: sse(chat_chunk("Hel"), {"error": {"message": "engine died"}}))
    engine = await started(upstream)
    deltas: list[Delta] = []
    with pytest.raises(Unavailable, match="error in the stream: engine died"):
        async for delta in engine.generate(CHAT):
            deltas.append(delta)
    assert [d.text for d in deltas] == ["Hel"]
    await engine.close()


class BrokenStream(httpx2.AsyncByteStream):
    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield f"data: {json.dumps(chat_chunk('Once'))}\n\n".encode()
        raise httpx2.ReadError("connection reset by peer")


async def test_a_connection_lost_mid_stream_is_unavailable() -> None:
    response = httpx2.Response(200, headers={"content-type": "text/event-stream"}, stream=BrokenStream())
    engine = await started(FakeUpstream(lambda _: response))
    with pytest.raises(Unavailable, match="is unreachable: ReadError"):
        await collect(engine, CHAT)
    assert engine.stats().running == 0
    await engine.close()
