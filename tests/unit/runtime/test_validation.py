import pytest

from headrace.request_rules.validation import validate_embed_request, validate_generate_request
from headrace.runtime.config import LimitSettings
from headrace.runtime.errors import InvalidArgument
from headrace.v1 import generation_pb2

LIMITS = LimitSettings(max_prompt_chars=100, max_tokens=64, max_messages=3)


def request(**kwargs: object) -> generation_pb2.GenerateRequest:
    sampling = kwargs.pop("sampling", {})
    base: dict[str, object] = {"prompt": "hi"}
    base.update(kwargs)
    return generation_pb2.GenerateRequest(sampling=generation_pb2.SamplingParams(**sampling), **base)  # type: ignore[arg-type]


def test_a_plain_request_passes() -> None:
    validate_generate_request(request(sampling={"temperature": 0.0, "max_tokens": 64, "top_p": 1.0}), LIMITS)


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        (generation_pb2.GenerateRequest(), "prompt / messages"),
        (request(messages=[generation_pb2.ChatMessage(role="user", content="x")]), "prompt / messages"),
        (request(prompt="x" * 101), "prompt: 101 characters is over the limit of 100"),
        (request(sampling={"temperature": 2.5}), "sampling.temperature"),
        (request(sampling={"temperature": float("nan")}), "sampling.temperature"),
        (request(sampling={"top_p": 0.0}), "sampling.top_p"),
        (request(sampling={"top_k": 0}), "sampling.top_k"),
        (request(sampling={"max_tokens": 0}), "sampling.max_tokens"),
        (request(sampling={"max_tokens": 65}), "sampling.max_tokens: 65 is outside \\[1, 64\\]"),
        (request(sampling={"max_tokens": 5, "min_tokens": 6}), "sampling.min_tokens"),
        (request(sampling={"presence_penalty": 3}), "sampling.presence_penalty"),
        (request(sampling={"repetition_penalty": 0}), "sampling.repetition_penalty"),
        (request(sampling={"stop": ["a", "b", "c", "d", "e"]}), "sampling.stop"),
        (request(sampling={"stop": [""]}), "sampling.stop\\[0\\]"),
        (request(model="m" * 300), "model"),
        (request(session_id="s" * 300), "session_id"),
        (request(tags=[""]), "tags\\[0\\]"),
    ],
)
def test_bad_fields_are_named(bad: generation_pb2.GenerateRequest, field: str) -> None:
    with pytest.raises(InvalidArgument, match=field):
        validate_generate_request(bad, LIMITS)


def test_chat_messages_are_bounded_and_roles_checked() -> None:
    def chat(*turns: tuple[str, str]) -> generation_pb2.GenerateRequest:
        return generation_pb2.GenerateRequest(
            messages=[generation_pb2.ChatMessage(role=r, content=c) for r, c in turns]
        )

    validate_generate_request(chat(("system", "be brief"), ("user", "hi")), LIMITS)
    with pytest.raises(InvalidArgument, match=r"messages\[1\].role: 'wizard'"):
        validate_generate_request(chat(("user", "a"), ("wizard", "b")), LIMITS)
    with pytest.raises(InvalidArgument, match="messages: 4 is over the limit of 3"):
        validate_generate_request(chat(*[("user", "a")] * 4), LIMITS)
    with pytest.raises(InvalidArgument, match="characters of content"):
        validate_generate_request(chat(("user", "a" * 60), ("user", "b" * 60)), LIMITS)


def test_embed_inputs_are_checked() -> None:
    validate_embed_request(generation_pb2.EmbedRequest(inputs=["a"]), LIMITS)
    with pytest.raises(InvalidArgument, match="inputs: at least one"):
        validate_embed_request(generation_pb2.EmbedRequest(), LIMITS)
    with pytest.raises(InvalidArgument, match=r"inputs\[1\]: empty"):
        validate_embed_request(generation_pb2.EmbedRequest(inputs=["a", ""]), LIMITS)
