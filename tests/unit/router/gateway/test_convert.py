"""OpenAI requests -> protos (what is honoured, what is refused by name),
and protos -> OpenAI's answers."""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import pytest

from headrace.runtime.config import LimitSettings
from headrace.runtime.errors import InvalidArgument
from headrace.v1 import generation_pb2
from services.router.gateway import convert, protocol
from services.router.gateway.body import parse_model
from services.router.gateway.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest

LIMITS = LimitSettings(max_tokens=512, max_prompt_chars=1000)
NO_POLICY = generation_pb2.CachePolicy()


def chat(**fields: Any) -> generation_pb2.GenerateRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    return convert.chat_request(parse_model(json.dumps(body), ChatCompletionRequest), NO_POLICY, LIMITS)


def test_chat_fields_map_onto_the_request() -> None:
    request = chat(
        messages=[
            {"role": "system", "content": "be brief"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}],
                "name": "u",
            },
        ],
        max_completion_tokens=20,
        temperature=0.5,
        top_p=0.9,
        seed=7,
        stop="END",
        presence_penalty=0.1,
        frequency_penalty=0.2,
        user="end-user",
        metadata={"k": "v"},
        top_k=40,
        min_tokens=2,
        repetition_penalty=1.1,
        ignore_eos=True,
        session_id="s1",
        priority="interactive",
        tags=["doc-1"],
        n=1,
        logprobs=False,
        tools=[],
        response_format={"type": "text"},
        store=False,
    )
    assert [(m.role, m.content, m.name) for m in request.messages] == [
        ("system", "be brief", ""),
        ("user", "one\ntwo", "u"),
    ]
    sampling = request.sampling
    assert sampling.max_tokens == 20 and sampling.temperature == pytest.approx(0.5)
    assert sampling.top_p == pytest.approx(0.9) and sampling.seed == 7 and list(sampling.stop) == ["END"]
    assert sampling.top_k == 40 and sampling.min_tokens == 2 and sampling.ignore_eos
    assert sampling.repetition_penalty == pytest.approx(1.1)
    assert request.user == "end-user" and request.session_id == "s1" and list(request.tags) == ["doc-1"]
    assert request.priority == generation_pb2.PRIORITY_INTERACTIVE
    assert dict(request.metadata) == {"k": "v"}


def test_unset_sampling_stays_unset() -> None:
    request = chat()
    for name in ("temperature", "top_p", "max_tokens", "seed"):
        assert not request.sampling.HasField(name)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"n": 2}, "n: 2 choices asked"),
        ({"logprobs": True}, "logprobs: log probabilities are not supported"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"logit_bias": {"1": 2.0}}, "logit_bias: not supported"),
        ({"tools": [{"type": "function"}]}, "tools: tool calling is not supported"),
        ({"tool_choice": "auto"}, "tool_choice: tool calling"),
        ({"response_format": {"type": "json_object"}}, "response_format: only"),
        ({"stream_options": {"include_usage": True}}, "stream_options: only allowed when stream is true"),
        ({"max_tokens": 5, "max_completion_tokens": 6}, "max_completion_tokens: differs from max_tokens"),
        ({"max_tokens": 10_000}, "max_tokens: 10000 is outside [1, 512]"),
        ({"temperature": 3}, "temperature: 3.0 is outside [0.0, 2.0]"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role: 'robot' is not one of"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            "messages[0].content[0]: 'image_url' parts are not supported",
        ),
        ({"messages": [{"role": "user", "content": "x" * 1001}]}, "over the limit of 1000"),
    ],
)
def test_what_cannot_be_honoured_is_refused_by_name(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        chat(**fields)
    assert message in caught.value.message


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"messages": []}, "messages: List should have at least 1 item"),
        ({"model": "m"}, "messages: required"),
        ({"messages": [{"role": "user", "content": "x"}], "frobnicate": 1}, "Unrecognized request argument supplied"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens: Input should be greater"),
    ],
)
def test_malformed_bodies_name_the_field(body: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_model(json.dumps(body), ChatCompletionRequest)
    assert message in caught.value.message


def test_a_body_that_is_not_a_json_object_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="not valid JSON"):
        parse_model(b"{nope", ChatCompletionRequest)
    with pytest.raises(InvalidArgument, match="expected a JSON object"):
        parse_model(b"[1, 2]", ChatCompletionRequest)


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        (["a", "b"], "prompt: 2 prompts given"),
        ([1, 2, 3], "prompt: token ids are not supported"),
        ("", "prompt: must not be empty"),
        ([], "prompt: must not be empty"),
    ],
)
def test_completion_prompts_are_one_text(prompt: Any, message: str) -> None:
    body = parse_model(json.dumps({"model": "m", "prompt": prompt}), CompletionRequest)
    with pytest.raises(InvalidArgument) as caught:
        convert.completion_request(body, NO_POLICY, LIMITS)
    assert message in caught.value.message


def test_a_completion_takes_a_one_text_list() -> None:
    body = parse_model(json.dumps({"prompt": ["Once"], "max_tokens": 3, "echo": False}), CompletionRequest)
    request = convert.completion_request(body, NO_POLICY, LIMITS)
    assert request.prompt == "Once" and request.sampling.max_tokens == 3


def test_embedding_inputs() -> None:
    body = parse_model(json.dumps({"model": "e", "input": "one"}), EmbeddingRequest)
    assert list(convert.embed_request(body, LIMITS).inputs) == ["one"]
    with pytest.raises(InvalidArgument, match="input: token ids"):
        convert.embed_request(parse_model(json.dumps({"input": [[1, 2]]}), EmbeddingRequest), LIMITS)
    with pytest.raises(InvalidArgument, match="input: at least one text"):
        convert.embed_request(parse_model(json.dumps({"input": []}), EmbeddingRequest), LIMITS)
    with pytest.raises(InvalidArgument, match="dimensions: not supported"):
        convert.embed_request(parse_model(json.dumps({"input": "x", "dimensions": 8}), EmbeddingRequest), LIMITS)


def test_embeddings_in_base64_are_little_endian_float32() -> None:
    response = generation_pb2.EmbedResponse(
        model="e@1",
        embeddings=[generation_pb2.Embedding(index=0, values=[0.5, -1.25])],
        usage=generation_pb2.Usage(prompt_tokens=3),
    )
    encoded = convert.embedding_list(response, encoding_format="base64")
    raw = base64.b64decode(str(encoded.data[0].embedding))
    assert struct.unpack("<2f", raw) == (0.5, -1.25)
    assert encoded.usage.total_tokens == 3
    assert convert.embedding_list(response, encoding_format="float").data[0].embedding == [0.5, -1.25]


def test_chat_chunks_name_the_role_first_and_add_usage_last() -> None:
    chunker = convert.ChatChunks(request_id="r1", created=10, include_usage=True)
    first = chunker.convert(generation_pb2.GenerateStreamResponse(text="Hi", model="m@1"))
    middle = chunker.convert(generation_pb2.GenerateStreamResponse(text=" there"))
    last = chunker.convert(
        generation_pb2.GenerateStreamResponse(
            text="!",
            finish_reason=generation_pb2.FINISH_REASON_STOP,
            usage=generation_pb2.Usage(prompt_tokens=2, completion_tokens=3, total_tokens=5),
        )
    )
    assert json.loads(first[0].model_dump_json())["choices"][0]["delta"] == {"role": "assistant", "content": "Hi"}
    assert json.loads(middle[0].model_dump_json())["choices"][0]["delta"] == {"content": " there"}
    assert [c.model for c in (*first, *middle, *last)] == ["m@1"] * 4
    assert last[0].choices[0].finish_reason == "stop" and last[0].usage is None
    assert last[1].choices == [] and last[1].usage is not None and last[1].usage.total_tokens == 5
    assert {c.id for c in (*first, *last)} == {"chatcmpl-r1"}


def test_a_stream_cut_short_does_not_pass_for_complete() -> None:
    assert convert.finish_reason_name(generation_pb2.FINISH_REASON_ABORT) == "abort"
    assert convert.finish_reason_name(generation_pb2.FINISH_REASON_UNSPECIFIED) is None


@pytest.mark.parametrize("chunks_class", [convert.ChatChunks, convert.CompletionChunks])
@pytest.mark.parametrize("include_usage", [True, False])
def test_encoded_chunks_are_the_models_json(
    chunks_class: type[convert.ChatChunks] | type[convert.CompletionChunks], include_usage: bool
) -> None:
    stream = [
        generation_pb2.GenerateStreamResponse(text="Hi", model="m@1"),
        generation_pb2.GenerateStreamResponse(text=' "quoted"\n\ttab'),
        generation_pb2.GenerateStreamResponse(text="é \u2028 \x00 \x7f 日本"),
        generation_pb2.GenerateStreamResponse(text=""),
        generation_pb2.GenerateStreamResponse(text=" then", model="m@2"),
        generation_pb2.GenerateStreamResponse(text=" more"),
        generation_pb2.GenerateStreamResponse(
            text="!",
            finish_reason=generation_pb2.FINISH_REASON_LENGTH,
            usage=generation_pb2.Usage(prompt_tokens=2, completion_tokens=6),
        ),
    ]
    as_models = chunks_class(request_id="r1", created=10, include_usage=include_usage)
    as_json = chunks_class(request_id="r1", created=10, include_usage=include_usage)
    for chunk in stream:
        assert as_json.encode(chunk) == [item.model_dump_json() for item in as_models.convert(chunk)]


def test_a_json_template_wraps_other_json_where_the_inner_json_was() -> None:
    inner = protocol.Usage(prompt_tokens=0, completion_tokens=0, total_tokens=0)
    head, tail = convert.json_template(protocol.ErrorDetail(message="x", type="t", code="c"), '"t"')
    assert json.loads(head + '"u"' + tail) == {"message": "x", "type": "u", "param": None, "code": "c"}
    with pytest.raises(ValueError):
        convert.json_template(inner, '"absent"')
