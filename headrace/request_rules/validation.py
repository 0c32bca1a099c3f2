"""Checks on what a request carries, naming the field and the limit that
failed. The router checks every request at the door; workers check again,
since they can be called directly."""

from __future__ import annotations

import math

from headrace.runtime.config import LimitSettings
from headrace.runtime.errors import InvalidArgument
from headrace.v1 import generation_pb2

_ROLES = frozenset({"system", "user", "assistant", "tool", "developer"})


def validate_generate_request(request: generation_pb2.GenerateRequest, limits: LimitSettings) -> None:
    if len(request.model) > limits.max_id_chars:
        raise InvalidArgument(f"model: longer than {limits.max_id_chars} characters")
    has_prompt = bool(request.prompt)
    has_messages = len(request.messages) > 0
    if has_prompt == has_messages:
        raise InvalidArgument("prompt / messages: set exactly one of them")
    if has_prompt and len(request.prompt) > limits.max_prompt_chars:
        raise InvalidArgument(
            f"prompt: {len(request.prompt)} characters is over the limit of {limits.max_prompt_chars}"
        )
    if has_messages:
        _validate_messages(request, limits)
    _validate_sampling(request.sampling, limits)
    if len(request.session_id) > limits.max_id_chars:
        raise InvalidArgument(f"session_id: longer than {limits.max_id_chars} characters")
    if len(request.user) > limits.max_id_chars:
        raise InvalidArgument(f"user: longer than {limits.max_id_chars} characters")
    if len(request.tags) > limits.max_tags:
        raise InvalidArgument(f"tags: {len(request.tags)} is over the limit of {limits.max_tags}")
    for index, tag in enumerate(request.tags):
        if not tag or len(tag) > limits.max_id_chars:
            raise InvalidArgument(f"tags[{index}]: must be 1 to {limits.max_id_chars} characters")
    if len(request.metadata) > limits.max_metadata_entries:
        raise InvalidArgument(
            f"metadata: {len(request.metadata)} entries is over the limit of {limits.max_metadata_entries}"
        )


def _validate_messages(request: generation_pb2.GenerateRequest, limits: LimitSettings) -> None:
    if len(request.messages) > limits.max_messages:
        raise InvalidArgument(f"messages: {len(request.messages)} is over the limit of {limits.max_messages}")
    total = 0
    for index, message in enumerate(request.messages):
        if message.role not in _ROLES:
            raise InvalidArgument(f"messages[{index}].role: {message.role!r} is not one of {sorted(_ROLES)}")
        total += len(message.content)
    if total > limits.max_prompt_chars:
        raise InvalidArgument(f"messages: {total} characters of content is over the limit of {limits.max_prompt_chars}")


def _check_range(name: str, value: float, low: float, high: float, *, low_open: bool = False) -> None:
    if math.isnan(value) or value > high or value < low or (low_open and value == low):
        bracket = "(" if low_open else "["
        raise InvalidArgument(f"sampling.{name}: {value} is outside {bracket}{low}, {high}]")


def _validate_sampling(sampling: generation_pb2.SamplingParams, limits: LimitSettings) -> None:
    if sampling.HasField("temperature"):
        _check_range("temperature", sampling.temperature, 0.0, 2.0)
    if sampling.HasField("top_p"):
        _check_range("top_p", sampling.top_p, 0.0, 1.0, low_open=True)
    if sampling.HasField("top_k") and sampling.top_k != -1 and sampling.top_k < 1:
        raise InvalidArgument(f"sampling.top_k: {sampling.top_k} must be -1 (off) or at least 1")
    if sampling.HasField("max_tokens") and not 1 <= sampling.max_tokens <= limits.max_tokens:
        raise InvalidArgument(f"sampling.max_tokens: {sampling.max_tokens} is outside [1, {limits.max_tokens}]")
    if sampling.HasField("min_tokens"):
        ceiling = sampling.max_tokens if sampling.HasField("max_tokens") else limits.max_tokens
        if sampling.min_tokens > ceiling:
            raise InvalidArgument(f"sampling.min_tokens: {sampling.min_tokens} is over max_tokens {ceiling}")
    if sampling.HasField("presence_penalty"):
        _check_range("presence_penalty", sampling.presence_penalty, -2.0, 2.0)
    if sampling.HasField("frequency_penalty"):
        _check_range("frequency_penalty", sampling.frequency_penalty, -2.0, 2.0)
    if sampling.HasField("repetition_penalty"):
        _check_range("repetition_penalty", sampling.repetition_penalty, 0.0, 2.0, low_open=True)
    if len(sampling.stop) > limits.max_stop_sequences:
        raise InvalidArgument(f"sampling.stop: {len(sampling.stop)} is over the limit of {limits.max_stop_sequences}")
    for index, stop in enumerate(sampling.stop):
        if not stop or len(stop) > limits.max_stop_chars:
            raise InvalidArgument(f"sampling.stop[{index}]: must be 1 to {limits.max_stop_chars} characters")


def validate_embed_request(request: generation_pb2.EmbedRequest, limits: LimitSettings) -> None:
    if not request.inputs:
        raise InvalidArgument("inputs: at least one text is required")
    if len(request.inputs) > limits.max_embed_inputs:
        raise InvalidArgument(f"inputs: {len(request.inputs)} is over the limit of {limits.max_embed_inputs}")
    for index, text in enumerate(request.inputs):
        if not text:
            raise InvalidArgument(f"inputs[{index}]: empty text")
        if len(text) > limits.max_embed_input_chars:
            raise InvalidArgument(
                f"inputs[{index}]: {len(text)} characters is over the limit of {limits.max_embed_input_chars}"
            )
