"""The input file of a batch job, in OpenAI's Batch format: one JSON object
per line,

    {"custom_id": "q1", "method": "POST", "url": "/v1/chat/completions",
     "body": {"model": "smollm2", "messages": [...], "max_tokens": 16}}

checked line by line and turned into the requests the workers run. A line
that cannot run is reported with its 1-based line number and the parameter
at fault, and the job fails validation as a whole (as OpenAI's does):
nothing runs from a file with a bad line.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from headrace.batch.model_choice import BatchModel, Task
from headrace.request_rules.json_input import JsonInputError, loads_bounded
from headrace.request_rules.validation import validate_embed_request, validate_generate_request
from headrace.runtime.config import LimitSettings
from headrace.runtime.errors import HeadraceError, InvalidArgument
from headrace.v1 import generation_pb2

ENDPOINT_TASKS: dict[str, Task] = {
    "/v1/chat/completions": "generate",
    "/v1/completions": "generate",
    "/v1/embeddings": "embed",
}
MAX_CUSTOM_ID_CHARS = 512
# Validation stops after this many bad lines: the report stays small.
MAX_REPORTED_ERRORS = 100

RowRequest = generation_pb2.GenerateRequest | generation_pb2.EmbedRequest
ModelResolver = Callable[[str, Task], BatchModel]


@dataclass(frozen=True)
class BatchRow:
    # 1-based line of the input file.
    line: int
    custom_id: str
    request: RowRequest


@dataclass(frozen=True)
class LineError:
    code: str
    message: str
    # 1-based line; 0 when about the file as a whole.
    line: int = 0
    param: str = ""


@dataclass
class ParsedInput:
    rows: list[BatchRow] = field(default_factory=list)
    errors: list[LineError] = field(default_factory=list)
    # The model version and pool every row runs on (None if no row parsed).
    model: BatchModel | None = None


class _RowProblem(Exception):
    def __init__(self, code: str, message: str, param: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param


def parse_input(
    data: bytes,
    *,
    endpoint: str,
    limits: LimitSettings,
    max_rows: int,
    resolve_model: ModelResolver,
) -> ParsedInput:
    """Every line of `data` as a row, or the errors that stop the job."""
    parsed = ParsedInput()
    task = ENDPOINT_TASKS[endpoint]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        reason = f"the input file is not UTF-8 ({exc.reason} at byte {exc.start})"
        parsed.errors.append(LineError("invalid_file", reason))
        return parsed
    seen: dict[str, int] = {}
    # Rows mostly name one model: resolve each name once, not once per row.
    resolved: dict[str, BatchModel] = {}

    def resolve_once(name: str, row_task: Task) -> BatchModel:
        model = resolved.get(name)
        if model is None:
            model = resolved[name] = resolve_model(name, row_task)
        return model

    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        if len(parsed.rows) >= max_rows:
            reason = f"the file has more than {max_rows} requests, the limit per batch"
            parsed.errors.append(LineError("too_many_requests", reason, number))
            break
        try:
            row, model = _parse_line(raw, number, endpoint, task, limits, resolve_once)
            if row.custom_id in seen:
                raise _RowProblem(
                    "duplicate_custom_id",
                    f"custom_id {row.custom_id!r} is also on line {seen[row.custom_id]}; each must be unique",
                    "custom_id",
                )
            if parsed.model is None:
                parsed.model = model
            elif model != parsed.model:
                raise _RowProblem(
                    "mixed_models",
                    f"body.model resolves to {model.model_version}, but earlier lines use "
                    f"{parsed.model.model_version}; a batch runs one model",
                    "body.model",
                )
        except _RowProblem as problem:
            parsed.errors.append(LineError(problem.code, problem.message, number, problem.param))
            if len(parsed.errors) >= MAX_REPORTED_ERRORS:
                break
            continue
        seen[row.custom_id] = number
        parsed.rows.append(row)
    if not parsed.rows and not parsed.errors:
        parsed.errors.append(LineError("empty_file", "the input file has no requests"))
    return parsed


def _parse_line(
    raw: str, number: int, endpoint: str, task: Task, limits: LimitSettings, resolve_model: ModelResolver
) -> tuple[BatchRow, BatchModel]:
    try:
        item = loads_bounded(raw, root="line")
    except JsonInputError as exc:
        raise _RowProblem("invalid_json_line", exc.message, _param_of(exc.message)) from None
    if not isinstance(item, dict):
        raise _RowProblem("invalid_json_line", "each line must be a JSON object")
    custom_id = item.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise _RowProblem("missing_required_parameter", "custom_id: required, a non-empty string", "custom_id")
    if len(custom_id) > MAX_CUSTOM_ID_CHARS:
        raise _RowProblem("invalid_value", f"custom_id: longer than {MAX_CUSTOM_ID_CHARS} characters", "custom_id")
    method = item.get("method", "POST")
    if method != "POST":
        raise _RowProblem("invalid_value", f"method: {method!r}; only POST is supported", "method")
    url = item.get("url")
    if url != endpoint:
        raise _RowProblem("mismatched_endpoint", f"url: {url!r} differs from the batch's endpoint {endpoint!r}", "url")
    body = item.get("body")
    if not isinstance(body, dict):
        raise _RowProblem("missing_required_parameter", "body: required, a JSON object", "body")
    unknown = set(item) - {"custom_id", "method", "url", "body"}
    if unknown:
        raise _RowProblem("invalid_value", f"unknown field(s) {sorted(unknown)} on the line", sorted(unknown)[0])
    model_name = body.get("model", "")
    if not isinstance(model_name, str):
        raise _RowProblem("invalid_value", "body.model: must be a string", "body.model")
    try:
        model = resolve_model(model_name, task)
    except HeadraceError as exc:
        raise _RowProblem("invalid_value", exc.message, "body.model") from None
    request = _BUILDERS[endpoint](body, model.model_version, limits)
    return BatchRow(line=number, custom_id=custom_id, request=request), model


def _param_of(message: str) -> str:
    """The parameter a JSON problem names ("line.body.messages[0]: ..."
    -> "body.messages[0]"), or "" for the line as a whole."""
    place = message.partition(": ")[0]
    return place.removeprefix("line.") if place.startswith("line.") else ""


# Parameters accepted and passed on, per endpoint; the rest are refused by
# name rather than silently ignored. "user" and "metadata" are accepted:
# they change nothing about the answer.
_SAMPLING_KEYS = {
    "temperature", "top_p", "top_k", "max_tokens", "max_completion_tokens", "stop", "seed",
    "presence_penalty", "frequency_penalty", "repetition_penalty", "min_tokens", "ignore_eos",
}  # fmt: skip
_CHAT_KEYS = {"model", "messages", "n", "stream", "user", "metadata", "store", *_SAMPLING_KEYS}
_COMPLETION_KEYS = {"model", "prompt", "n", "stream", "user", "echo", "best_of", *_SAMPLING_KEYS}
_EMBEDDING_KEYS = {"model", "input", "user", "encoding_format"}


def _check_keys(body: Mapping[str, Any], allowed: set[str]) -> None:
    for key in sorted(body):
        if key not in allowed:
            raise _RowProblem("unsupported_parameter", f"body.{key}: not supported in batch jobs here", f"body.{key}")
    if body.get("stream"):
        raise _RowProblem("invalid_value", "body.stream: batch rows cannot stream", "body.stream")
    if body.get("n", 1) != 1:
        raise _RowProblem("invalid_value", "body.n: only 1 is supported", "body.n")


def _number(body: Mapping[str, Any], key: str) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _RowProblem("invalid_type", f"body.{key}: must be a number", f"body.{key}")
    return float(value)


def _integer(body: Mapping[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _RowProblem("invalid_type", f"body.{key}: must be an integer", f"body.{key}")
    return value


def _sampling(body: Mapping[str, Any]) -> generation_pb2.SamplingParams:
    sampling = generation_pb2.SamplingParams()
    for key in ("temperature", "top_p", "presence_penalty", "frequency_penalty", "repetition_penalty"):
        value = _number(body, key)
        if value is not None:
            setattr(sampling, key, value)
    max_tokens = _integer(body, "max_completion_tokens")
    if max_tokens is None:
        max_tokens = _integer(body, "max_tokens")
    for key, value in (("max_tokens", max_tokens), ("min_tokens", _integer(body, "min_tokens"))):
        if value is not None:
            if value < 0 or value > 2**32 - 1:
                raise _RowProblem("invalid_value", f"body.{key}: {value} is out of range", f"body.{key}")
            setattr(sampling, key, value)
    top_k = _integer(body, "top_k")
    if top_k is not None:
        if not -(2**31) <= top_k < 2**31:
            raise _RowProblem("invalid_value", f"body.top_k: {top_k} is out of range", "body.top_k")
        sampling.top_k = top_k
    seed = _integer(body, "seed")
    if seed is not None:
        if not -(2**63) <= seed < 2**63:
            raise _RowProblem("invalid_value", f"body.seed: {seed} is out of range", "body.seed")
        sampling.seed = seed
    stop = body.get("stop")
    if isinstance(stop, str):
        sampling.stop.append(stop)
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        sampling.stop.extend(stop)
    elif stop is not None:
        raise _RowProblem("invalid_type", "body.stop: must be a string or a list of strings", "body.stop")
    ignore_eos = body.get("ignore_eos", False)
    if not isinstance(ignore_eos, bool):
        raise _RowProblem("invalid_type", "body.ignore_eos: must be true or false", "body.ignore_eos")
    sampling.ignore_eos = ignore_eos
    return sampling


def _text_content(content: Any, param: str) -> str:
    """A message's content: a string, or a list of text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for index, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise _RowProblem(
                    "invalid_value", f"{param}[{index}]: only text parts are supported", f"{param}[{index}]"
                )
            texts.append(part["text"])
        return "".join(texts)
    raise _RowProblem("invalid_type", f"{param}: must be a string or a list of text parts", param)


def _validated(request: RowRequest, limits: LimitSettings) -> RowRequest:
    try:
        if isinstance(request, generation_pb2.GenerateRequest):
            validate_generate_request(request, limits)
        else:
            validate_embed_request(request, limits)
    except InvalidArgument as exc:
        raise _RowProblem("invalid_value", f"body: {exc.message}", "body") from None
    return request


def _user(body: Mapping[str, Any]) -> str:
    user = body.get("user", "")
    if not isinstance(user, str):
        raise _RowProblem("invalid_type", "body.user: must be a string", "body.user")
    return user


def _chat_request(body: Mapping[str, Any], model_version: str, limits: LimitSettings) -> RowRequest:
    _check_keys(body, _CHAT_KEYS)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _RowProblem("missing_required_parameter", "body.messages: required, a non-empty list", "body.messages")
    turns = []
    for index, message in enumerate(messages):
        param = f"body.messages[{index}]"
        if not isinstance(message, dict):
            raise _RowProblem("invalid_type", f"{param}: must be an object", param)
        role = message.get("role")
        if not isinstance(role, str):
            raise _RowProblem("missing_required_parameter", f"{param}.role: required", f"{param}.role")
        name = message.get("name", "")
        if not isinstance(name, str):
            raise _RowProblem("invalid_type", f"{param}.name: must be a string", f"{param}.name")
        turns.append(
            generation_pb2.ChatMessage(
                role=role, content=_text_content(message.get("content", ""), f"{param}.content"), name=name
            )
        )
    return _validated(
        generation_pb2.GenerateRequest(
            model=model_version,
            messages=turns,
            sampling=_sampling(body),
            priority=generation_pb2.PRIORITY_BATCH,
            user=_user(body),
        ),
        limits,
    )


def _completion_request(body: Mapping[str, Any], model_version: str, limits: LimitSettings) -> RowRequest:
    _check_keys(body, _COMPLETION_KEYS)
    if body.get("echo"):
        raise _RowProblem("invalid_value", "body.echo: not supported", "body.echo")
    if body.get("best_of", 1) != 1:
        raise _RowProblem("invalid_value", "body.best_of: only 1 is supported", "body.best_of")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise _RowProblem(
            "invalid_value", "body.prompt: required, one non-empty string (one prompt per row)", "body.prompt"
        )
    return _validated(
        generation_pb2.GenerateRequest(
            model=model_version,
            prompt=prompt,
            sampling=_sampling(body),
            priority=generation_pb2.PRIORITY_BATCH,
            user=_user(body),
        ),
        limits,
    )


def _embedding_request(body: Mapping[str, Any], model_version: str, limits: LimitSettings) -> RowRequest:
    _check_keys(body, _EMBEDDING_KEYS)
    if body.get("encoding_format", "float") != "float":
        raise _RowProblem("invalid_value", "body.encoding_format: only 'float' is supported", "body.encoding_format")
    inputs = body.get("input")
    if isinstance(inputs, str):
        inputs = [inputs]
    if not isinstance(inputs, list) or not all(isinstance(text, str) for text in inputs):
        raise _RowProblem("invalid_type", "body.input: must be a string or a list of strings", "body.input")
    return _validated(generation_pb2.EmbedRequest(model=model_version, inputs=inputs, user=_user(body)), limits)


_BUILDERS: dict[str, Callable[[Mapping[str, Any], str, LimitSettings], RowRequest]] = {
    "/v1/chat/completions": _chat_request,
    "/v1/completions": _completion_request,
    "/v1/embeddings": _embedding_request,
}
