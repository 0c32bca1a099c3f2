"""Inputs for fuzzing the mesh: Hypothesis strategies for HTTP bodies
(valid OpenAI bodies with fields swapped for anything JSON can hold, lone
surrogates and deep nesting included), and random or mutated protobuf
messages for any gRPC method, made from the descriptors alone."""

from __future__ import annotations

import json
import math
import random
from typing import Any

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

# --- HTTP ----------------------------------------------------------------

CHAT = {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
COMPLETION = {"model": "smollm2", "prompt": "hi", "max_tokens": 2}
EMBEDDING = {"model": "minilm", "input": ["hi"]}
BATCH = {"input_file_id": "file-x", "endpoint": "/v1/chat/completions", "completion_window": "24h"}
REALTIME = {"type": "chat.request", "id": "q", "request": CHAT}

# Names the endpoints know, so that mutations hit real fields too.
FIELD_NAMES = sorted(
    {
        *CHAT, *COMPLETION, *EMBEDDING, *BATCH, "role", "content", "stream", "stream_options", "n", "stop",
        "temperature", "top_p", "seed", "user", "metadata", "tools", "response_format", "logit_bias",
        "priority", "tags", "session_id", "encoding_format", "dimensions", "type", "text", "include_usage",
    }
)  # fmt: skip

# Text as an attacker writes it: lone surrogates, controls, long runs.
any_text = st.one_of(
    st.text(st.characters(exclude_categories=()), max_size=12),
    st.sampled_from(["", "smollm2", "minilm", "\ud800", "a\udfffb", "\x00", "💥" * 40, "x" * 3000]),
)
json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    any_text,
)
json_value = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(FIELD_NAMES) | any_text, inner, max_size=3)
    ),
    max_leaves=12,
)


@st.composite
def mutated(draw: st.DrawFn, seed: Any) -> Any:
    """`seed` with a few fields set to anything, removed, or nested inside."""
    value = json.loads(json.dumps(seed))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        containers = _containers(value)
        target = draw(st.sampled_from(containers))
        action = draw(st.sampled_from(["set", "set", "delete", "wrap"]))
        if isinstance(target, dict):
            key = draw(st.sampled_from([*target, *FIELD_NAMES]) if target else st.sampled_from(FIELD_NAMES))
            if action == "delete":
                target.pop(key, None)
            elif action == "wrap" and key in target:
                target[key] = [target[key]]
            else:
                target[key] = draw(json_value)
        elif target:
            index = draw(st.integers(min_value=0, max_value=len(target) - 1))
            if action == "delete":
                del target[index]
            else:
                target[index] = draw(json_value)
    return value


def _containers(value: Any) -> list[Any]:
    found = [value]
    for item in value.values() if isinstance(value, dict) else value if isinstance(value, list) else ():
        if isinstance(item, dict | list):
            found.extend(_containers(item))
    return found


def encoded(value: Any) -> bytes:
    # allow_nan: NaN and Infinity, which are not JSON, go out as they are.
    return json.dumps(value, allow_nan=True).encode()


def bodies(seed: Any) -> st.SearchStrategy[bytes]:
    """Bodies for an endpoint whose valid body is `seed`."""
    return st.one_of(
        st.just(seed).map(encoded),
        mutated(seed).map(encoded),
        json_value.map(encoded),
        st.binary(max_size=64),
        st.integers(min_value=50, max_value=3000).map(lambda depth: b"[" * depth + b"]" * depth),
        st.integers(min_value=50, max_value=3000).map(lambda depth: b'{"a":' * depth + b"1" + b"}" * depth),
    )


# What an HTTP client can send at all (no surrounding spaces, printable ASCII).
header_values = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40).map(str.strip)

# --- gRPC ----------------------------------------------------------------

_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
_STRINGS = ["", "smollm2", "minilm", "smollm2@1", "acme", "batch_x", "file-x", "127.0.0.1:1", "../..", "\x00", "é" * 50]


def _scalar(field: FieldDescriptor, rng: random.Random) -> Any:
    kind = field.type
    if kind in _INT_RANGES:
        low, high = _INT_RANGES[kind]
        return rng.choice([0, 1, -1 if low < 0 else 2, low, high, rng.randint(low, high)])
    if kind in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return rng.choice([0.0, -1.0, 0.5, 1e30, math.inf, -math.inf, math.nan, rng.uniform(-1e6, 1e6)])
    if kind == FieldDescriptor.TYPE_BOOL:
        return rng.random() < 0.5
    if kind == FieldDescriptor.TYPE_ENUM:
        # Proto3 enums are open: unknown numbers arrive too.
        return rng.choice([*(value.number for value in field.enum_type.values), 99, -1])
    if kind == FieldDescriptor.TYPE_BYTES:
        return rng.randbytes(rng.choice([0, 1, 16, 300]))
    text = rng.choice(_STRINGS)
    return text if rng.random() < 0.7 else "".join(chr(rng.randint(32, 0xD7FF)) for _ in range(rng.randint(1, 40)))


def random_message(descriptor: Descriptor, rng: random.Random, depth: int = 0) -> Message:
    message = message_factory.GetMessageClass(descriptor)()
    for field in descriptor.fields:
        if rng.random() < 0.4:
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key_field, value_field = (
                field.message_type.fields_by_name["key"],
                field.message_type.fields_by_name["value"],
            )
            for _ in range(rng.randint(0, 2)):
                key = _scalar(key_field, rng)
                if value_field.message_type is not None:
                    if depth < 3:
                        getattr(message, field.name)[key].CopyFrom(
                            random_message(value_field.message_type, rng, depth + 1)
                        )
                else:
                    getattr(message, field.name)[key] = _scalar(value_field, rng)
            continue
        repeats = rng.randint(0, 3) if field.is_repeated else None
        if field.message_type is not None:
            if depth >= 3:
                continue
            if repeats is None:
                getattr(message, field.name).CopyFrom(random_message(field.message_type, rng, depth + 1))
            else:
                for _ in range(repeats):
                    getattr(message, field.name).add().CopyFrom(random_message(field.message_type, rng, depth + 1))
        elif repeats is None:
            setattr(message, field.name, _scalar(field, rng))
        else:
            getattr(message, field.name).extend(_scalar(field, rng) for _ in range(repeats))
    return message


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    """`data` with a few bytes flipped, inserted, dropped, or cut short."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        action = rng.choice(["flip", "insert", "delete", "truncate", "varint"])
        position = rng.randint(0, len(out)) if out else 0
        if action == "flip" and out:
            out[min(position, len(out) - 1)] ^= 1 << rng.randint(0, 7)
        elif action == "insert":
            out[position:position] = rng.randbytes(rng.randint(1, 8))
        elif action == "delete" and out:
            del out[position : position + rng.randint(1, 8)]
        elif action == "truncate":
            del out[position:]
        else:
            # A length prefix claiming far more than follows.
            out[position:position] = b"\x0a\xff\xff\xff\xff\x0f"
    return bytes(out)
