"""The openai engine: an OpenAI-compatible upstream (an API provider, or
another vLLM server) as a pool, over a lean client of its HTTP API
(openai_wire.py: aiohttp and json, no per-chunk SDK models).

Chat messages go to chat.completions, a prompt to completions, streamed
with usage in the last chunk; a caller that wants only the whole answer
(a unary request, a batch row) gets it from one unary upstream call. Abort, or the caller closing the iterator,
closes the upstream response: a vLLM server aborts a request whose client
went away, and an API provider stops generating (and billing) it.

Health costs the upstream nothing while requests succeed: the model list
is asked at start, and again only after a request failed in a way that
says the upstream may be down (unreachable, 5xx, timed out), then with
backoff until it answers. (Asked on every load report, it was two calls a
second per worker, day and night, against a paid API.)
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncGenerator, Callable, Coroutine, Sequence
from dataclasses import replace
from typing import Any, TypeVar

from headrace.runtime.engine_settings import OpenAIEngineSettings
from headrace.runtime.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    HeadraceError,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)
from services.worker.engines.backend_load import BackendLoad, probe
from services.worker.engines.base import Delta, EngineStats, FinishReason, GenerationRequest, Sampling
from services.worker.engines.openai_wire import (
    UpstreamClient,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeout,
    UpstreamUnreachable,
    chunks,
)

_T = TypeVar("_T")

_FINISH_REASONS = {
    "stop": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "abort": FinishReason.ABORT,
    # The model chose to stop (a tool call) or the provider stopped it.
    "tool_calls": FinishReason.STOP,
    "function_call": FinishReason.STOP,
    "content_filter": FinishReason.STOP,
}

# Models named in an error before "...".
_MODELS_SHOWN = 10

# After a failure, the model list is asked at most this often (doubling).
HEALTH_BACKOFF_MIN_S = 1.0
HEALTH_BACKOFF_MAX_S = 30.0


class OpenAIEngine:
    kind = "openai"

    def __init__(
        self,
        settings: OpenAIEngineSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """clock: what health backoff is timed by."""
        self._settings = settings
        self._health = _UpstreamHealth(clock)
        self._client: UpstreamClient | None = None
        self._model = settings.model
        self._load = BackendLoad(settings.max_concurrency)
        # Abort signals of the requests in flight, by request id.
        self._calls: dict[str, _Call] = {}

    @property
    def model(self) -> str:
        """The upstream's model name requests go to."""
        return self._model

    @property
    def base_url(self) -> str:
        return self._settings.base_url

    async def start(self) -> None:
        settings = self._settings
        api_key: str | None = None
        if settings.api_key_env:
            api_key = os.environ.get(settings.api_key_env, "")
            if not api_key:
                raise FailedPrecondition(
                    f"openai engine: the environment variable {settings.api_key_env} (api_key_env) "
                    f"holds no API key for {settings.base_url}"
                )
        self._client = UpstreamClient(
            settings.base_url,
            api_key=api_key,
            connect_timeout_s=settings.connect_timeout_s,
            request_timeout_s=settings.request_timeout_s,
            max_retries=settings.max_retries,
        )
        try:
            self._model = await self._pick_model()
        except BaseException:
            # A start that failed leaves no session open (its connections belong to this loop).
            await self.close()
            raise

    async def _pick_model(self) -> str:
        """The configured model, checked against the upstream's list where
        it has one; else the one model it serves."""
        wanted = self._settings.model
        try:
            served = await self._api.list_models()
        except UpstreamStatusError as exc:
            if wanted and exc.status in (403, 404, 405):
                self._health.answered()
                return wanted  # An upstream without a model list.
            raise self._error(exc, "listing models") from exc
        except UpstreamError as exc:
            raise self._error(exc, "listing models") from exc
        self._health.answered()
        shown = ", ".join(served[:_MODELS_SHOWN]) + (", ..." if len(served) > _MODELS_SHOWN else "")
        if wanted:
            if wanted not in served:
                raise FailedPrecondition(
                    f"openai engine: {self._settings.base_url} does not serve model {wanted!r}; it serves: {shown}"
                )
            return wanted
        if len(served) != 1:
            raise FailedPrecondition(
                f"openai engine: {self._settings.base_url} serves {len(served)} models ({shown or 'none'}); "
                "set the engine's `model` to one of them"
            )
        return served[0]

    @property
    def _api(self) -> UpstreamClient:
        if self._client is None:
            raise FailedPrecondition("openai engine: not started")
        return self._client

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[Delta, None]:
        if request.request_id in self._calls:
            raise InvalidArgument(f"request {request.request_id!r} is already running")
        call = _Call()
        self._calls[request.request_id] = call
        try:
            async with self._load.slots.at(request.priority):
                streamed = self._settings.stream and not request.whole_answer
                steps = self._streamed(request, call) if streamed else self._whole(request, call)
                async for delta in steps:
                    yield delta
            self._health.answered()
        except UpstreamError as exc:
            error = self._error(exc, "generate")
            if isinstance(error, (Unavailable, DeadlineExceeded)):
                self._health.failed()
            raise error from exc
        finally:
            del self._calls[request.request_id]

    async def _streamed(self, request: GenerationRequest, call: _Call) -> AsyncGenerator[Delta, None]:
        chat = request.prompt is None
        path, body, headers = self._call(request, stream=True)
        opened = await call.until(self._api.open_stream(path, body, headers))
        if isinstance(opened, _Marker):
            yield Delta("", finish_reason=FinishReason.ABORT)
            return
        usage: dict[str, Any] | None = None
        finish: FinishReason | None = None
        streamed = 0
        try:
            events = chunks(opened)
            while True:
                chunk = await call.until(_next(events))
                if isinstance(chunk, _Marker):
                    if chunk is _ABORTED:
                        finish = FinishReason.ABORT
                    break
                usage = chunk.get("usage") or usage
                for choice in chunk.get("choices") or ():
                    reason = choice.get("finish_reason")
                    if reason:
                        finish = _FINISH_REASONS.get(reason, FinishReason.STOP)
                    text = ((choice.get("delta") or {}).get("content") if chat else choice.get("text")) or ""
                    if text:
                        streamed += 1
                        self._load.meter.add(1)
                        yield Delta(text, completion_tokens=streamed)
        finally:
            # Closing the response is what tells the upstream to stop.
            await opened.aclose()
        final = _final_delta(finish, usage, streamed)
        # The upstream's count is exact; one chunk per token was an estimate.
        self._load.meter.add(max(0, final.completion_tokens - streamed))
        yield final

    async def _whole(self, request: GenerationRequest, call: _Call) -> AsyncGenerator[Delta, None]:
        path, body, headers = self._call(request, stream=False)
        answered = await call.until(self._api.complete(path, body, headers))
        if isinstance(answered, _Marker):
            yield Delta("", finish_reason=FinishReason.ABORT)
            return
        choices = answered.get("choices") or ()
        choice: dict[str, Any] = choices[0] if choices else {}
        if request.prompt is None:
            text = (choice.get("message") or {}).get("content") or ""
        else:
            text = choice.get("text") or ""
        reason = choice.get("finish_reason")
        finish = _FINISH_REASONS.get(reason, FinishReason.STOP) if reason else None
        final = _final_delta(finish, answered.get("usage"), 1 if text else 0)
        self._load.meter.add(final.completion_tokens)
        # One delta, text and finish together: the answer came in one piece,
        # so the worker reports no first-token time apart from its end.
        yield replace(final, text=text)

    def _call(self, request: GenerationRequest, *, stream: bool) -> tuple[str, dict[str, Any], dict[str, str]]:
        """The upstream path, JSON body and headers of one generation."""
        sampling, extra_body = _sampling_arguments(request.sampling, chat=request.prompt is None)
        body: dict[str, Any] = {"model": self._model}
        if request.prompt is None:
            path = "/chat/completions"
            body["messages"] = [_message(turn.role, turn.content, turn.name) for turn in request.messages]
        else:
            path = "/completions"
            body["prompt"] = request.prompt
        body |= sampling
        if stream:
            body |= {"stream": True, "stream_options": {"include_usage": True}}
        # vLLM's extensions go in the body as the SDK's extra_body did.
        body |= extra_body
        return path, body, {"X-Request-Id": request.request_id}

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        raise Unimplemented("the openai engine serves text generation; embeddings go to an embeddings pool")

    async def abort(self, request_id: str) -> bool:
        call = self._calls.get(request_id)
        if call is None:
            return False
        call.abort()
        return True

    @property
    def running(self) -> int:
        return self._load.running

    def stats(self) -> EngineStats:
        return self._load.stats()

    async def health(self) -> bool:
        """Called on every load report: asks the upstream only when a failure
        made its health a question, and then no more often than the backoff."""
        client = self._client
        if client is None:
            return False
        if not self._health.probe_due():
            return self._health.healthy
        healthy = await probe(lambda timeout_s: _upstream_answers(client, timeout_s))
        if healthy:
            self._health.answered()
        else:
            self._health.probe_failed()
        return healthy

    async def close(self) -> None:
        for call in self._calls.values():
            call.abort()
        if self._client is not None:
            await self._client.close()
            self._client = None

    def _error(self, exc: UpstreamError, during: str) -> HeadraceError:
        return upstream_error(exc, f"openai upstream {self._settings.base_url} ({during})")


async def _upstream_answers(client: UpstreamClient, timeout_s: float) -> bool:
    """Whether the upstream answers its model list; a refusal below 500 is an
    answer too (an upstream without a model list is up all the same)."""
    try:
        await client.list_models(timeout_s)
    except UpstreamStatusError as exc:
        return exc.status < 500
    return True


def upstream_error(exc: UpstreamError, where: str) -> HeadraceError:
    """An upstream failure as the Headrace error it means."""
    if isinstance(exc, UpstreamTimeout):
        return DeadlineExceeded(f"{where}: timed out")
    if isinstance(exc, UpstreamUnreachable):
        return Unavailable(f"{where} is unreachable: {exc}")
    if isinstance(exc, UpstreamStatusError):
        status = exc.status
        message = f"{where}: HTTP {status}: {exc.message}"
        retry_after = exc.retry_after_s
        if status == 401:
            return Unauthenticated(message)
        if status == 403:
            return PermissionDenied(message)
        if status == 404:
            return NotFound(message)
        if status == 408:
            return DeadlineExceeded(message)
        if status == 409:
            return FailedPrecondition(message)
        if status == 429:
            return ResourceExhausted(message, retry_after_s=retry_after)
        if status >= 500:
            return Unavailable(message, retry_after_s=retry_after)
        if 400 <= status < 500:
            return InvalidArgument(message)
    return Internal(f"{where}: {exc}")


def _final_delta(finish: FinishReason | None, usage: dict[str, Any] | None, streamed: int) -> Delta:
    """The last delta: finish reason and the upstream's token counts."""
    prompt_tokens = completion_tokens = cached_tokens = 0
    if usage:
        prompt_tokens = int(usage.get("prompt_tokens") or 0)
        completion_tokens = int(usage.get("completion_tokens") or 0)
        cached_tokens = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    return Delta(
        "",
        finish_reason=finish or FinishReason.STOP,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens or streamed,
        cached_prompt_tokens=cached_tokens,
    )


def _sampling_arguments(sampling: Sampling, chat: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """OpenAI's own parameters, and vLLM's extensions (sent in the body only
    when set: an API provider may refuse them)."""
    arguments: dict[str, Any] = {}
    for name in ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty"):
        value = getattr(sampling, name)
        if value is not None:
            arguments[name] = value
    if sampling.max_tokens is not None:
        arguments["max_completion_tokens" if chat else "max_tokens"] = sampling.max_tokens
    if sampling.stop:
        arguments["stop"] = list(sampling.stop)
    extra: dict[str, Any] = {}
    for name in ("top_k", "repetition_penalty", "min_tokens"):
        value = getattr(sampling, name)
        if value is not None:
            extra[name] = value
    if sampling.ignore_eos:
        extra["ignore_eos"] = True
    return arguments, extra


def _message(role: str, content: str, name: str) -> dict[str, str]:
    message: dict[str, str] = {"role": role, "content": content}
    if name:
        message["name"] = name
    return message


class _UpstreamHealth:
    """Whether the upstream answers, as the engine last saw it: in question
    until it first answers (a start that failed leaves it so), healthy
    after any answer, in question again after a failure (probe at once),
    and probed again after each failed probe only once its backoff has
    passed."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.healthy = False
        self._in_question = True
        self._backoff_s = HEALTH_BACKOFF_MIN_S
        self._next_probe = 0.0

    def answered(self) -> None:
        self.healthy, self._in_question = True, False
        self._backoff_s = HEALTH_BACKOFF_MIN_S

    def failed(self) -> None:
        """A request failed as if the upstream were down: ask it at the next check."""
        if not self._in_question:
            self._in_question = True
            self._next_probe = self._clock()

    def probe_due(self) -> bool:
        return self._in_question and self._clock() >= self._next_probe

    def probe_failed(self) -> None:
        self.healthy = False
        self._next_probe = self._clock() + self._backoff_s
        self._backoff_s = min(self._backoff_s * 2, HEALTH_BACKOFF_MAX_S)


class _Marker:
    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


_ABORTED = _Marker("ABORTED")
_END = _Marker("END")


async def _next(chunks: Any) -> Any:
    try:
        return await chunks.__anext__()
    except StopAsyncIteration:
        return _END


class _Call:
    """One request in flight: a way to run an upstream step that abort()
    cuts short. Only the step in progress is a task of its own, which
    abort cancels (one task a step, not a race against an abort event)."""

    def __init__(self) -> None:
        self.aborted = False
        self._step: asyncio.Future[Any] | None = None

    async def until(self, step: Coroutine[Any, Any, _T]) -> _T | _Marker:
        """step's result, or _ABORTED (with step cancelled) if abort comes first."""
        if self.aborted:
            step.close()
            return _ABORTED
        task: asyncio.Future[_T] = asyncio.ensure_future(step)
        self._step = task
        try:
            return await task
        except asyncio.CancelledError:
            # abort() cancelled the step; a cancelled caller must still stop.
            if self.aborted and not _caller_cancelled():
                return _ABORTED
            raise
        finally:
            self._step = None

    def abort(self) -> None:
        self.aborted = True
        if self._step is not None:
            self._step.cancel()


def _caller_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
