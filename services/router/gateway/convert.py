"""OpenAI shapes <-> the mesh's protos. Requests: refuse what cannot be
honoured (by field name), then build the GenerateRequest / EmbedRequest
the flows take. Answers: GenerateResponse, stream deltas and EmbedResponse
become OpenAI's objects."""

from __future__ import annotations

import base64
import struct
from typing import Generic, TypeVar

from pydantic import BaseModel
from pydantic_core import to_json

from headrace.request_rules.validation import validate_embed_request, validate_generate_request
from headrace.runtime.config import LimitSettings
from headrace.runtime.errors import InvalidArgument
from headrace.v1 import generation_pb2
from services.router.gateway import protocol

C = TypeVar("C", protocol.ChatCompletionChunk, protocol.Completion)

_PRIORITIES: dict[str, generation_pb2.Priority.ValueType] = {
    "interactive": generation_pb2.PRIORITY_INTERACTIVE,
    "standard": generation_pb2.PRIORITY_STANDARD,
    "batch": generation_pb2.PRIORITY_BATCH,
}

# OpenAI's finish reasons are stop and length; an answer the system cut
# short says so rather than pass for a complete one.
_FINISH_REASONS: dict[generation_pb2.FinishReason.ValueType, str] = {
    generation_pb2.FINISH_REASON_STOP: "stop",
    generation_pb2.FINISH_REASON_LENGTH: "length",
    generation_pb2.FINISH_REASON_ABORT: "abort",
    generation_pb2.FINISH_REASON_ERROR: "error",
}


def finish_reason_name(reason: generation_pb2.FinishReason.ValueType) -> str | None:
    return _FINISH_REASONS.get(reason)


# --- requests --------------------------------------------------------------


def _refuse(field: str, why: str) -> InvalidArgument:
    return InvalidArgument(f"{field}: {why}")


def _check_sampling_support(body: protocol._Sampling) -> None:
    if body.n not in (None, 1):
        raise _refuse("n", f"{body.n} choices asked; one choice per request is supported")
    if body.logprobs not in (None, False, 0):
        raise _refuse("logprobs", "log probabilities are not supported")
    if body.logit_bias:
        raise _refuse("logit_bias", "not supported")
    if body.stream_options is not None and not body.stream:
        raise _refuse("stream_options", "only allowed when stream is true")


def _check_chat_support(body: protocol.ChatCompletionRequest) -> None:
    _check_sampling_support(body)
    if body.top_logprobs not in (None, 0):
        raise _refuse("top_logprobs", "log probabilities are not supported")
    if body.tools or body.functions:
        raise _refuse("tools" if body.tools else "functions", "tool calling is not supported")
    for name, choice in (("tool_choice", body.tool_choice), ("function_call", body.function_call)):
        if choice not in (None, "none"):
            raise _refuse(name, "tool calling is not supported")
    if body.response_format is not None and body.response_format.get("type", "text") != "text":
        raise _refuse("response_format", 'only {"type": "text"} is supported')
    if body.modalities is not None and body.modalities != ["text"]:
        raise _refuse("modalities", 'only ["text"] is supported')
    for name, value in (
        ("audio", body.audio),
        ("prediction", body.prediction),
        ("web_search_options", body.web_search_options),
    ):
        if value is not None:
            raise _refuse(name, "not supported")
    if (
        body.max_tokens is not None
        and body.max_completion_tokens is not None
        and body.max_tokens != body.max_completion_tokens
    ):
        raise _refuse("max_completion_tokens", "differs from max_tokens; set one of them")


def _message_text(message: protocol.ChatMessage, index: int) -> str:
    if message.tool_calls or message.function_call is not None:
        raise _refuse(f"messages[{index}].tool_calls", "tool calling is not supported")
    if message.audio is not None:
        raise _refuse(f"messages[{index}].audio", "audio is not supported")
    content = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for part_index, part in enumerate(content):
        if part.type != "text" or part.text is None:
            raise _refuse(
                f"messages[{index}].content[{part_index}]", f"{part.type!r} parts are not supported; only text"
            )
        texts.append(part.text)
    return "\n".join(texts)


def _fill_sampling(request: generation_pb2.GenerateRequest, body: protocol._Sampling, max_tokens: int | None) -> None:
    sampling = request.sampling
    if max_tokens is not None:
        sampling.max_tokens = max_tokens
    if body.temperature is not None:
        sampling.temperature = body.temperature
    if body.top_p is not None:
        sampling.top_p = body.top_p
    if body.seed is not None:
        sampling.seed = body.seed
    if body.presence_penalty is not None:
        sampling.presence_penalty = body.presence_penalty
    if body.frequency_penalty is not None:
        sampling.frequency_penalty = body.frequency_penalty
    if body.stop is not None:
        sampling.stop.extend([body.stop] if isinstance(body.stop, str) else body.stop)
    if body.top_k is not None:
        sampling.top_k = body.top_k
    if body.min_tokens is not None:
        sampling.min_tokens = body.min_tokens
    if body.repetition_penalty is not None:
        sampling.repetition_penalty = body.repetition_penalty
    if body.ignore_eos:
        sampling.ignore_eos = True
    request.user = body.user or ""
    request.session_id = body.session_id or ""
    if body.priority is not None:
        request.priority = _PRIORITIES[body.priority]
    if body.tags:
        request.tags.extend(body.tags)


def _validated(request: generation_pb2.GenerateRequest, limits: LimitSettings) -> generation_pb2.GenerateRequest:
    """The router's checks, with OpenAI's names for the fields."""
    try:
        validate_generate_request(request, limits)
    except InvalidArgument as exc:
        raise InvalidArgument(exc.message.removeprefix("sampling.")) from exc
    return request


def chat_request(
    body: protocol.ChatCompletionRequest, cache: generation_pb2.CachePolicy, limits: LimitSettings
) -> generation_pb2.GenerateRequest:
    _check_chat_support(body)
    request = generation_pb2.GenerateRequest(model=body.model, cache=cache)
    for index, message in enumerate(body.messages):
        request.messages.append(
            generation_pb2.ChatMessage(
                role=message.role, content=_message_text(message, index), name=message.name or ""
            )
        )
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    _fill_sampling(request, body, max_tokens)
    if body.metadata:
        request.metadata.update(body.metadata)
    return _validated(request, limits)


def _single_prompt(prompt: str | list[str] | list[int] | list[list[int]]) -> str:
    if isinstance(prompt, str):
        text = prompt
    elif len(prompt) == 1 and isinstance(prompt[0], str):
        text = prompt[0]
    elif prompt and all(isinstance(item, str) for item in prompt):
        raise _refuse("prompt", f"{len(prompt)} prompts given; send one prompt per request")
    elif not prompt:
        raise _refuse("prompt", "must not be empty")
    else:
        raise _refuse("prompt", "token ids are not supported; send text")
    if not text:
        raise _refuse("prompt", "must not be empty")
    return text


def completion_request(
    body: protocol.CompletionRequest, cache: generation_pb2.CachePolicy, limits: LimitSettings
) -> generation_pb2.GenerateRequest:
    _check_sampling_support(body)
    if body.echo:
        raise _refuse("echo", "not supported")
    if body.suffix:
        raise _refuse("suffix", "not supported")
    if body.best_of not in (None, 1):
        raise _refuse("best_of", "one candidate per request is supported")
    request = generation_pb2.GenerateRequest(model=body.model, prompt=_single_prompt(body.prompt), cache=cache)
    _fill_sampling(request, body, body.max_tokens)
    return _validated(request, limits)


def embed_request(body: protocol.EmbeddingRequest, limits: LimitSettings) -> generation_pb2.EmbedRequest:
    if body.dimensions is not None:
        raise _refuse("dimensions", "not supported; embeddings have the model's own size")
    inputs = body.input
    if isinstance(inputs, str):
        texts = [inputs]
    elif all(isinstance(item, str) for item in inputs):
        texts = [str(item) for item in inputs]
    else:
        raise _refuse("input", "token ids are not supported; send text")
    request = generation_pb2.EmbedRequest(model=body.model, inputs=texts, user=body.user or "")
    try:
        validate_embed_request(request, limits)
    except InvalidArgument as exc:
        # The proto's field is `inputs`; OpenAI's is `input`.
        raise InvalidArgument("input" + exc.message.removeprefix("inputs")) from exc
    return request


# --- answers ---------------------------------------------------------------


def usage(value: generation_pb2.Usage, cost: generation_pb2.Cost | None = None) -> protocol.Usage:
    return protocol.Usage(
        cost_usd=cost.usd if cost is not None else None,
        prompt_tokens=value.prompt_tokens,
        completion_tokens=value.completion_tokens,
        total_tokens=value.total_tokens or value.prompt_tokens + value.completion_tokens,
        prompt_tokens_details=protocol.PromptTokensDetails(cached_tokens=value.cached_prompt_tokens),
    )


def chat_completion(response: generation_pb2.GenerateResponse, *, created: int) -> protocol.ChatCompletion:
    return protocol.ChatCompletion(
        id=f"chatcmpl-{response.request_id}",
        created=created,
        model=response.model,
        choices=[
            protocol.ChatChoice(
                message=protocol.AssistantMessage(content=response.text),
                finish_reason=finish_reason_name(response.finish_reason) or "stop",
            )
        ],
        usage=usage(response.usage, response.cost),
    )


def text_completion(response: generation_pb2.GenerateResponse, *, created: int) -> protocol.Completion:
    return protocol.Completion(
        id=f"cmpl-{response.request_id}",
        created=created,
        model=response.model,
        choices=[
            protocol.CompletionChoice(
                text=response.text, finish_reason=finish_reason_name(response.finish_reason) or "stop"
            )
        ],
        usage=usage(response.usage, response.cost),
    )


def embedding_list(response: generation_pb2.EmbedResponse, *, encoding_format: str) -> protocol.EmbeddingList:
    data = []
    for item in response.embeddings:
        vector: list[float] | str = list(item.values)
        if encoding_format == "base64":
            # What OpenAI sends: little-endian float32s, base64.
            vector = base64.b64encode(struct.pack(f"<{len(item.values)}f", *item.values)).decode()
        data.append(protocol.EmbeddingData(index=item.index, embedding=vector))
    tokens = response.usage.prompt_tokens
    return protocol.EmbeddingList(
        data=data,
        model=response.model,
        usage=protocol.EmbeddingUsage(prompt_tokens=tokens, total_tokens=response.usage.total_tokens or tokens),
    )


# Stands for a delta's text while a stream's template is made.
_PLACEHOLDER = "\x00headrace-delta\x00"


def json_template(outer: BaseModel, inner: str) -> tuple[str, str]:
    """`outer`'s JSON split around `inner` (JSON that occurs in it): the
    text before and after, to wrap other JSON in the same place."""
    head, found, tail = outer.model_dump_json().partition(inner)
    if not found:
        raise ValueError(f"{inner!r} does not occur in {type(outer).__name__}'s JSON")
    return head, tail


def _json_string(text: str) -> str:
    return to_json(text).decode()


class _Chunks(Generic[C]):
    """Stream deltas -> OpenAI chunk objects: one per delta, plus a usage
    chunk at the end when asked for. `encode` gives them as JSON; a plain
    delta (neither the first nor the last) is filled into a template made
    once per stream, not built and dumped as models per token."""

    _prefix: str

    def __init__(self, *, request_id: str, created: int, include_usage: bool) -> None:
        self._id = f"{self._prefix}-{request_id}"
        self._created = created
        self._include_usage = include_usage
        self._model = ""
        self._first = True
        self._plain: tuple[str, str] | None = None

    def _delta(self, text: str, finish_reason: str | None) -> C:
        raise NotImplementedError

    def _usage(self, value: protocol.Usage) -> C:
        raise NotImplementedError

    def convert(self, chunk: generation_pb2.GenerateStreamResponse) -> list[C]:
        if chunk.model:
            self._model = chunk.model
        out = [self._delta(chunk.text, finish_reason_name(chunk.finish_reason))]
        self._first = False
        if chunk.finish_reason and self._include_usage:
            out.append(self._usage(usage(chunk.usage, chunk.cost)))
        return out

    def encode(self, chunk: generation_pb2.GenerateStreamResponse) -> list[str]:
        """`convert(chunk)`, as JSON."""
        plain = not chunk.finish_reason and not chunk.model
        if plain and self._plain is not None:
            head, tail = self._plain
            return [head + _json_string(chunk.text) + tail]
        out = [item.model_dump_json() for item in self.convert(chunk)]
        if not chunk.finish_reason:
            self._plain = json_template(self._delta(_PLACEHOLDER, None), _json_string(_PLACEHOLDER))
        return out


class ChatChunks(_Chunks[protocol.ChatCompletionChunk]):
    """chat.completion.chunk objects; the first names the role."""

    _prefix = "chatcmpl"

    def _delta(self, text: str, finish_reason: str | None) -> protocol.ChatCompletionChunk:
        delta = (
            protocol.ChunkDelta(role="assistant", content=text) if self._first else protocol.ChunkDelta(content=text)
        )
        return protocol.ChatCompletionChunk(
            id=self._id,
            created=self._created,
            model=self._model,
            choices=[protocol.ChunkChoice(delta=delta, finish_reason=finish_reason)],
        )

    def _usage(self, value: protocol.Usage) -> protocol.ChatCompletionChunk:
        return protocol.ChatCompletionChunk(
            id=self._id, created=self._created, model=self._model, choices=[], usage=value
        )


class CompletionChunks(_Chunks[protocol.Completion]):
    """text_completion chunk objects (OpenAI's legacy stream)."""

    _prefix = "cmpl"

    def _delta(self, text: str, finish_reason: str | None) -> protocol.Completion:
        return protocol.Completion(
            id=self._id,
            created=self._created,
            model=self._model,
            choices=[protocol.CompletionChoice(text=text, finish_reason=finish_reason)],
        )

    def _usage(self, value: protocol.Usage) -> protocol.Completion:
        return protocol.Completion(id=self._id, created=self._created, model=self._model, choices=[], usage=value)
