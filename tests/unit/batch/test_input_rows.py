"""A batch input file, line by line: what runs, and what is refused with
its line number and the parameter at fault."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headrace.batch.input_rows import MAX_REPORTED_ERRORS, ParsedInput, parse_input
from headrace.batch.model_choice import Task, resolve_batch_model
from headrace.runtime.config import LimitSettings, Settings
from headrace.v1 import generation_pb2

SETTINGS = Settings(
    pools={"small": {"engine": {"kind": "synthetic"}}, "embed": {"engine": {"kind": "synthetic"}}},
    models={
        "smollm2": {"default_version": "2", "versions": {"1": {"pool": "small"}, "2": {"pool": "small"}}},
        "minilm": {"task": "embed", "default_version": "1", "versions": {"1": {"pool": "embed"}}},
    },
    aliases={"chat": "smollm2@1"},
    default_model="smollm2",
    default_embedding_model="minilm",
    limits=LimitSettings(max_tokens=64, max_prompt_chars=200),
)


def parse(data: bytes, endpoint: str = "/v1/chat/completions", max_rows: int = 100) -> ParsedInput:
    def resolve(name: str, task: Task) -> Any:
        return resolve_batch_model(SETTINGS, name, task=task)

    return parse_input(data, endpoint=endpoint, limits=SETTINGS.limits, max_rows=max_rows, resolve_model=resolve)


def line(body: dict[str, Any], custom_id: str = "a", url: str = "/v1/chat/completions", **extra: Any) -> bytes:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body, **extra}).encode() + b"\n"


CHAT = {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}]}


def only_error(parsed: ParsedInput) -> tuple[int, str, str, str]:
    assert not parsed.rows or parsed.errors, parsed
    (error,) = parsed.errors
    return error.line, error.code, error.param, error.message


def test_a_chat_row_becomes_a_batch_priority_request_on_the_resolved_version() -> None:
    body = {
        **CHAT,
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "two "}, {"type": "text", "text": "parts"}]},
        ],
        "max_completion_tokens": 9,
        "max_tokens": 50,
        "temperature": 0.5,
        "top_p": 0.9,
        "stop": "END",
        "seed": 7,
        "user": "u1",
    }
    parsed = parse(line(body))
    assert not parsed.errors
    (row,) = parsed.rows
    assert (row.line, row.custom_id) == (1, "a")
    request = row.request
    assert isinstance(request, generation_pb2.GenerateRequest)
    assert request.model == "smollm2@2" and request.priority == generation_pb2.PRIORITY_BATCH
    assert [(m.role, m.content) for m in request.messages] == [("system", "be brief"), ("user", "two parts")]
    # max_completion_tokens wins over the older max_tokens.
    assert request.sampling.max_tokens == 9
    assert request.sampling.temperature == pytest.approx(0.5) and request.sampling.top_p == pytest.approx(0.9)
    assert list(request.sampling.stop) == ["END"] and request.sampling.seed == 7 and request.user == "u1"
    assert parsed.model is not None and (parsed.model.model_version, parsed.model.pool) == ("smollm2@2", "small")


def test_aliases_pins_and_the_default_model_resolve_once_per_job() -> None:
    assert parse(line({**CHAT, "model": "chat"})).rows[0].request.model == "smollm2@1"
    assert parse(line({**CHAT, "model": "smollm2@1"})).rows[0].request.model == "smollm2@1"
    no_model = {"messages": CHAT["messages"]}
    assert parse(line(no_model)).rows[0].request.model == "smollm2@2"


def test_completion_and_embedding_rows() -> None:
    completion = parse(
        line({"model": "smollm2", "prompt": ["once"], "max_tokens": 3}, url="/v1/completions"),
        endpoint="/v1/completions",
    )
    request = completion.rows[0].request
    assert isinstance(request, generation_pb2.GenerateRequest) and request.prompt == "once"
    embedding = parse(line({"input": ["a", "b"]}, url="/v1/embeddings"), endpoint="/v1/embeddings")
    embed = embedding.rows[0].request
    assert isinstance(embed, generation_pb2.EmbedRequest)
    assert list(embed.inputs) == ["a", "b"] and embed.model == "minilm@1"


def test_blank_lines_are_skipped_and_lines_keep_their_numbers() -> None:
    parsed = parse(b"\n" + line(CHAT, "a") + b"   \n" + line(CHAT, "b"))
    assert [(r.line, r.custom_id) for r in parsed.rows] == [(2, "a"), (4, "b")]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"{not json\n", (1, "invalid_json_line", "")),
        (b"[1, 2]\n", (1, "invalid_json_line", "")),
        # Valid JSON that protobuf would refuse, or the decoder choke on.
        (
            line({**CHAT, "messages": [{"role": "user", "content": "\ud800"}]}),
            (1, "invalid_json_line", "body.messages[0].content"),
        ),
        (line(CHAT, custom_id="\udc00"), (1, "invalid_json_line", "custom_id")),
        (b'{"custom_id": ' + b"[" * 5000 + b"]" * 5000 + b"}\n", (1, "invalid_json_line", "")),
        (line(CHAT, custom_id=""), (1, "missing_required_parameter", "custom_id")),
        (line(CHAT, custom_id="x" * 513), (1, "invalid_value", "custom_id")),
        (line(CHAT, method="GET"), (1, "invalid_value", "method")),
        (line(CHAT, url="/v1/completions"), (1, "mismatched_endpoint", "url")),
        (line(CHAT, extra="x"), (1, "invalid_value", "extra")),
        (
            json.dumps({"custom_id": "a", "url": "/v1/chat/completions"}).encode(),
            (1, "missing_required_parameter", "body"),
        ),
        (line({**CHAT, "model": "gpt-9"}), (1, "invalid_value", "body.model")),
        (line({**CHAT, "model": "minilm"}), (1, "invalid_value", "body.model")),
        (line({**CHAT, "model": "smollm2@7"}), (1, "invalid_value", "body.model")),
        (line({**CHAT, "tools": []}), (1, "unsupported_parameter", "body.tools")),
        (line({**CHAT, "stream": True}), (1, "invalid_value", "body.stream")),
        (line({**CHAT, "n": 2}), (1, "invalid_value", "body.n")),
        (line({**CHAT, "temperature": "hot"}), (1, "invalid_type", "body.temperature")),
        (line({**CHAT, "temperature": True}), (1, "invalid_type", "body.temperature")),
        (line({**CHAT, "max_tokens": 2.5}), (1, "invalid_type", "body.max_tokens")),
        (line({**CHAT, "max_tokens": -1}), (1, "invalid_value", "body.max_tokens")),
        (line({**CHAT, "seed": 2**70}), (1, "invalid_value", "body.seed")),
        (line({**CHAT, "stop": [1]}), (1, "invalid_type", "body.stop")),
        (line({**CHAT, "messages": []}), (1, "missing_required_parameter", "body.messages")),
        (line({**CHAT, "messages": ["hi"]}), (1, "invalid_type", "body.messages[0]")),
        (line({**CHAT, "messages": [{"content": "hi"}]}), (1, "missing_required_parameter", "body.messages[0].role")),
        (
            line({**CHAT, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
            (1, "invalid_value", "body.messages[0].content[0]"),
        ),
        # The shared request checks name the field too.
        (line({**CHAT, "temperature": 3}), (1, "invalid_value", "body")),
        (line({**CHAT, "max_tokens": 65}), (1, "invalid_value", "body")),
        (line({**CHAT, "messages": [{"role": "robot", "content": "x"}]}), (1, "invalid_value", "body")),
    ],
)
def test_a_bad_line_is_reported_with_its_line_and_parameter(data: bytes, expected: tuple[int, str, str]) -> None:
    found_line, code, param, message = only_error(parse(data))
    assert (found_line, code, param) == expected
    assert message


def test_the_shared_checks_keep_their_wording() -> None:
    *_, message = only_error(parse(line({**CHAT, "temperature": 3})))
    assert "sampling.temperature: 3.0 is outside [0.0, 2.0]" in message


def test_duplicate_custom_ids_and_mixed_models_name_the_other_line() -> None:
    duplicate = only_error(parse(line(CHAT, "a") + line(CHAT, "a")))
    assert duplicate[:3] == (2, "duplicate_custom_id", "custom_id") and "line 1" in duplicate[3]
    mixed = only_error(parse(line(CHAT, "a") + line({**CHAT, "model": "chat"}, "b")))
    assert mixed[:3] == (2, "mixed_models", "body.model") and "smollm2@2" in mixed[3]


def test_file_level_problems() -> None:
    assert only_error(parse(b""))[1] == "empty_file"
    assert only_error(parse(b"\xff\xfe"))[1] == "invalid_file"
    too_many = parse(line(CHAT, "a") + line(CHAT, "b") + line(CHAT, "c"), max_rows=2)
    assert [e.code for e in too_many.errors] == ["too_many_requests"] and too_many.errors[0].line == 3


def test_the_error_report_is_bounded() -> None:
    parsed = parse(b"{\n" * (MAX_REPORTED_ERRORS + 50))
    assert len(parsed.errors) == MAX_REPORTED_ERRORS


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=12,
)
body_keys = st.sampled_from(
    ["model", "messages", "max_tokens", "temperature", "top_p", "stop", "seed", "n", "stream", "user", "prompt", "x"]
)


@settings(max_examples=100, deadline=None)
@given(
    custom_id=json_values,
    url=st.sampled_from(["/v1/chat/completions", "/v1/completions", 3]),
    body=st.dictionaries(body_keys, json_values, max_size=6) | json_values,
)
def test_any_line_is_a_row_or_a_named_error_never_a_crash(custom_id: Any, url: Any, body: Any) -> None:
    data = json.dumps({"custom_id": custom_id, "url": url, "body": body}).encode()
    parsed = parse(data)
    assert len(parsed.rows) + len(parsed.errors) == 1
    for error in parsed.errors:
        assert error.line == 1 and error.code and error.message


def test_each_model_name_is_resolved_once_and_refusals_stay_per_line() -> None:
    calls: list[str] = []

    def resolve(name: str, task: Task) -> Any:
        calls.append(name)
        return resolve_batch_model(SETTINGS, name, task=task)

    rows = b"".join(line(CHAT, f"r{i}") for i in range(5)) + line({**CHAT, "model": "nope"}, "x")
    rows += line({**CHAT, "model": "nope"}, "y")
    parsed = parse_input(
        rows, endpoint="/v1/chat/completions", limits=SETTINGS.limits, max_rows=100, resolve_model=resolve
    )
    assert len(parsed.rows) == 5
    assert [(e.line, e.param) for e in parsed.errors] == [(6, "body.model"), (7, "body.model")]
    assert calls == ["smollm2", "nope", "nope"]
