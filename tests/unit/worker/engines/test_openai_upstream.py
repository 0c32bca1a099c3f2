"""The openai engine against a fake upstream (a real HTTP server on
127.0.0.1, aiohttp's low-level one, answering as each test says): what
the engine sends, how it reads streams, and how upstream errors map to
Headrace errors."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import RawTestServer

from headrace.local.redis_server import free_port
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
from services.worker.engines.openai_wire import env_proxy
from services.worker.load_reporter import LoadReporter

Answer = web.StreamResponse | Awaitable[web.StreamResponse]
Handler = Callable[[web.BaseRequest], Answer]


def models(*names: str) -> web.Response:
    return web.json_response({"object": "list", "data": [{"id": n, "object": "model"} for n in names]})


def sse(*events: dict[str, Any]) -> web.Response:
    body = "".join(f"data: {json.dumps(event)}\n\n" for event in events) + "data: [DONE]\n\n"
    return web.Response(body=body.encode(), content_type="text/event-stream")


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


@dataclasses.dataclass(frozen=True)
class Seen:
    """A request as the upstream received it."""

    path: str
    headers: Mapping[str, str]
    content: bytes


class FakeUpstream:
    """Serves /models, records requests, answers generation with `answer`."""

    def __init__(self, answer: Handler, served: tuple[str, ...] = ("m",)) -> None:
        self.answer = answer
        self.served = served
        self.requests: list[Seen] = []

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        self.requests.append(Seen(request.path, request.headers, await request.read()))
        if request.path.endswith("/models"):
            return models(*self.served)
        return await answered(self.answer(request))

    def body(self, index: int = -1) -> dict[str, Any]:
        return dict(json.loads(self.requests[index].content))


async def answered(answer: Answer) -> web.StreamResponse:
    return await answer if inspect.isawaitable(answer) else answer


# Each test's upstream servers, closed after it.
_SERVERS: list[RawTestServer] = []


@pytest.fixture(autouse=True)
async def close_servers() -> AsyncIterator[None]:
    yield
    while _SERVERS:
        await _SERVERS.pop().close()


async def serving(upstream: Handler) -> str:
    """The base URL of a real server on 127.0.0.1 that answers with `upstream`."""

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        return await answered(upstream(request))

    server = RawTestServer(handle)
    await server.start_server()
    _SERVERS.append(server)
    return f"http://127.0.0.1:{server.port}/v1"


async def started(upstream: Handler, **settings: Any) -> OpenAIEngine:
    engine = OpenAIEngine(OpenAIEngineSettings(base_url=await serving(upstream), **settings))
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
    assert upstream.requests[-1].path == "/v1/chat/completions"
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
    assert upstream.requests[-1].path == "/v1/completions"
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
    upstream = FakeUpstream(lambda _: web.json_response(answer))
    engine = await started(upstream, stream=False)
    deltas = await collect(engine, CHAT)
    # One piece: the text with the finish (no first token apart from the last).
    assert deltas == [Delta("Hi!", finish_reason=FinishReason.STOP, prompt_tokens=3, completion_tokens=2)]
    assert "stream" not in upstream.body()
    await engine.close()


def error(status: int, headers: dict[str, str] | None = None) -> Callable[[web.BaseRequest], web.Response]:
    body = {"error": {"message": f"upstream says {status}", "type": "x", "code": None}}
    return lambda _: web.json_response(body, status=status, headers=headers or {})


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
    assert f"openai upstream {engine.base_url} (generate): HTTP {status}: upstream says {status}" in str(caught.value)
    assert caught.value.retry_after_s == retry_after
    assert engine.stats().running == 0
    await engine.close()


async def test_an_upstream_gone_after_start_is_unavailable() -> None:
    engine = await started(FakeUpstream(lambda _: sse(chat_chunk("x", "stop"))))
    await _SERVERS.pop().close()  # connections closed, the port refuses
    with pytest.raises(Unavailable, match="is unreachable: ClientConnectorError"):
        await collect(engine, CHAT)
    await engine.close()


async def test_an_upstream_slower_than_the_request_timeout_is_deadline_exceeded() -> None:
    async def slow(request: web.BaseRequest) -> web.StreamResponse:
        await asyncio.sleep(2)
        return sse(chat_chunk("late", "stop"))

    engine = await started(FakeUpstream(slow), request_timeout_s=0.2)
    with pytest.raises(DeadlineExceeded, match="\\(generate\\): timed out"):
        await collect(engine, CHAT)
    assert engine.stats().running == 0
    await engine.close()


async def test_unreachable_upstream_fails_start_with_unavailable() -> None:
    base_url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    engine = OpenAIEngine(OpenAIEngineSettings(base_url=base_url))
    with pytest.raises(Unavailable, match=f"openai upstream {base_url} \\(listing models\\) is unreachable"):
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
    def no_list(request: web.BaseRequest) -> Answer:
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


class StallingStream:
    """An SSE answer that sends one chunk, then nothing until the client
    closes the connection."""

    def __init__(self) -> None:
        self.closed = asyncio.Event()

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        await response.write(f"data: {json.dumps(chat_chunk('Once'))}\n\n".encode())
        try:
            while request.transport is not None and not request.transport.is_closing():
                await asyncio.sleep(0.01)
        finally:
            self.closed.set()
        return response


def stalling(body: StallingStream) -> Handler:
    return body


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
    await asyncio.wait_for(body.closed.wait(), 5)
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
    await asyncio.wait_for(body.closed.wait(), 5)
    assert engine.stats().running == 0
    await engine.close()


def model_list_calls(upstream: FakeUpstream) -> int:
    return sum(1 for request in upstream.requests if request.path.endswith("/models"))


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
    """Answers everything, or (down) 503 to everything; a 400 on request."""

    def __init__(self) -> None:
        self.down = False
        self.bad_request = False
        self.model_lists = 0

    def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        listing = request.path.endswith("/models")
        self.model_lists += listing
        if self.down:
            return error(503)(request)
        if listing:
            return models("m")
        if self.bad_request:
            return error(400)(request)
        return sse(chat_chunk("Hi"), chat_chunk(None, "stop"), usage_chunk(1, 1))


async def test_a_failure_makes_health_ask_the_upstream_then_back_off() -> None:
    upstream = FlakyUpstream()
    clock = FakeClock()
    engine = OpenAIEngine(OpenAIEngineSettings(base_url=await serving(upstream)), clock=clock)
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

    def no_list(request: web.BaseRequest) -> web.StreamResponse:
        if served["down"]:
            return error(503)(request)
        if request.path.endswith("/models"):
            return web.json_response({"error": {"message": "no such route"}}, status=404)
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
    upstream = FakeUpstream(lambda _: web.json_response(answer))
    engine = await started(upstream)  # a streaming engine
    deltas = await collect(engine, dataclasses.replace(CHAT, whole_answer=True))
    assert [d.text for d in deltas] == ["Hi!"]
    assert deltas[-1].finish_reason is FinishReason.STOP and deltas[-1].completion_tokens == 2
    assert "stream" not in upstream.body() and "stream_options" not in upstream.body()
    await engine.close()


async def test_max_retries_retries_a_5xx_before_the_response_starts() -> None:
    answers = iter([error(503, {"retry-after-ms": "10"}), error(503, {"retry-after-ms": "10"})])

    def flaky(request: web.BaseRequest) -> Answer:
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


async def broken_stream(request: web.BaseRequest) -> web.StreamResponse:
    """One chunk, then the connection is dropped mid-answer."""
    response = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await response.prepare(request)
    await response.write(f"data: {json.dumps(chat_chunk('Once'))}\n\n".encode())
    assert request.transport is not None
    request.transport.abort()
    return response


async def test_a_connection_lost_mid_stream_is_unavailable() -> None:
    engine = await started(FakeUpstream(broken_stream))
    with pytest.raises(Unavailable, match="is unreachable: ClientPayloadError"):
        await collect(engine, CHAT)
    assert engine.stats().running == 0
    await engine.close()


def test_the_upstreams_proxy_comes_from_the_environment_once(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert env_proxy("https://api.example.com/v1") is None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    assert env_proxy("https://api.example.com/v1") == "http://proxy.internal:3128"
    assert env_proxy("http://api.example.com/v1") is None  # no HTTP_PROXY set
    monkeypatch.setenv("NO_PROXY", "example.com")
    assert env_proxy("https://api.example.com/v1") is None
