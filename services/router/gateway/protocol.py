"""OpenAI's request and response shapes, as the gateway reads and writes them.

Requests are strict: an argument the API does not know is refused, as
OpenAI refuses it, naming the field. Arguments OpenAI knows but Headrace
cannot honour (tools, logprobs, n > 1, ...) are accepted only at their
defaults; convert.py says which and refuses the rest by name. A few
extensions are accepted beside OpenAI's own: vLLM's sampling extras
(top_k, min_tokens, repetition_penalty, ignore_eos) and Headrace's routing
hints (session_id, priority, tags).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# uint32 fields of the protos.
_U32 = 2**32 - 1
_I64 = 2**63 - 1

Priority = Literal["interactive", "standard", "batch"]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ContentPart(BaseModel):
    """One part of a message's content; only text parts can be served."""

    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class ChatMessage(_Request):
    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = Field(default=None, max_length=256)
    # Known to the API; refused when set (no tool calling here).
    tool_calls: list[Any] | None = None
    tool_call_id: str | None = None
    function_call: Any = None
    refusal: str | None = None
    audio: Any = None


class StreamOptions(_Request):
    include_usage: bool = False
    include_obfuscation: bool | None = None


class _Sampling(_Request):
    """Sampling arguments shared by chat and text completions."""

    model: str = ""
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=_U32)
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=-_I64 - 1, le=_I64)
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    logprobs: Any = None
    user: str | None = None
    # vLLM's extensions.
    top_k: int | None = Field(default=None, ge=-1, le=2**31 - 1)
    min_tokens: int | None = Field(default=None, ge=0, le=_U32)
    repetition_penalty: float | None = None
    ignore_eos: bool | None = None
    # Headrace's routing hints.
    session_id: str | None = None
    priority: Priority | None = None
    tags: list[str] | None = None


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=_U32)
    top_logprobs: int | None = None
    metadata: dict[str, str] | None = None
    response_format: dict[str, Any] | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    functions: list[Any] | None = None
    function_call: Any = None
    modalities: list[str] | None = None
    audio: Any = None
    prediction: Any = None
    web_search_options: Any = None
    # Accepted and ignored: they change nothing about the answer here.
    store: bool | None = None
    service_tier: str | None = None
    reasoning_effort: str | None = None
    verbosity: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    prompt_cache_options: Any = None
    safety_identifier: str | None = None
    moderation: Any = None


class CompletionRequest(_Sampling):
    # One prompt per request; a list is accepted when it holds exactly one text.
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool | None = None
    suffix: str | None = None
    best_of: int | None = None


class EmbeddingRequest(_Request):
    model: str = ""
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None


# --- responses -------------------------------------------------------------


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None
    # Headrace's addition: what the answer cost (its share of the engine's
    # time by tokens, times the pool's price); 0 for a cached answer.
    cost_usd: float | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = None


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: None = None
    finish_reason: str


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: None = None


class ChunkDelta(BaseModel):
    # Only the first delta of a stream names the role.
    role: Literal["assistant"] | None = Field(default=None, exclude_if=lambda value: value is None)
    content: str = ""


class ChunkChoice(BaseModel):
    index: int = 0
    delta: ChunkDelta
    logprobs: None = None
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    # Empty in the usage chunk that stream_options.include_usage adds at the end.
    choices: list[ChunkChoice]
    usage: Usage | None = None
    system_fingerprint: None = None


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: None = None
    finish_reason: str | None = None


class Completion(BaseModel):
    """A text completion, or (object unchanged, as OpenAI does) one chunk of a streamed one."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: None = None


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    # Floats, or base64 of little-endian float32s (encoding_format=base64).
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: EmbeddingUsage


class ModelDetails(BaseModel):
    """Headrace's own facts about a model id (an extension field)."""

    resolves_to: str
    alias: bool
    task: Literal["generate", "embed"]
    pool: str
    engine: str
    deprecated: bool
    replaced_by: str
    context_length: int


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "headrace"
    headrace: ModelDetails


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


# --- the WebSocket at /v1/realtime/chat ---------------------------------------


class RealtimeChatRequest(_Request):
    """Client -> server: start a chat completion (streamed; `stream` is implied)."""

    type: Literal["chat.request"]
    # The client's own id for this request, echoed on every message about it.
    id: str | None = Field(default=None, max_length=256)
    request: ChatCompletionRequest


class RealtimeCancel(_Request):
    """Client -> server: stop the request in progress."""

    type: Literal["chat.cancel"]
    id: str | None = Field(default=None, max_length=256)


class RealtimeStarted(BaseModel):
    """Server -> client: the request runs; how it is served (the HTTP headers' values)."""

    type: Literal["chat.started"] = "chat.started"
    id: str | None
    request_id: str
    headers: dict[str, str]


class RealtimeDelta(BaseModel):
    """Server -> client: one chunk, exactly as the SSE stream carries it."""

    type: Literal["chat.delta"] = "chat.delta"
    id: str | None
    chunk: ChatCompletionChunk


class RealtimeDone(BaseModel):
    """Server -> client: the request is over (complete, or cancelled by the client)."""

    type: Literal["chat.done"] = "chat.done"
    id: str | None
    request_id: str
    cancelled: bool = False


class RealtimeError(BaseModel):
    """Server -> client: the request failed (before or during the stream), or a message was bad."""

    type: Literal["error"] = "error"
    id: str | None
    # The HTTP status the same error would have had.
    status: int
    error: ErrorDetail
    retry_after: int | None = None
