"""JSON from outside: UTF-8 only, no lone surrogates, bounded nesting, each
refusal naming the place; text that passes decodes as json.loads would."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headrace.request_rules.json_input import MAX_JSON_DEPTH, JsonInputError, loads_bounded


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            b'{"a": [{"b": "x\\ud800y"}]}',
            "a[0].b: not valid Unicode (a lone UTF-16 surrogate, \\ud800, at character 1)",
        ),
        (b'{"\\udc00": 1}', "a key in request body: not valid Unicode"),
        (b'"\\udfff"', "request body: not valid Unicode"),
        # A lone high surrogate before a character that is not its pair.
        (b'["\\ud83d x"]', "[0]: not valid Unicode"),
        (b"[" * 1000 + b"]" * 1000, f"request body: nested deeper than {MAX_JSON_DEPTH} levels"),
        (b"[" * 100_000 + b"]" * 100_000, f"request body: nested deeper than {MAX_JSON_DEPTH} levels"),
        (b'{"a": ' * 65 + b"1" + b"}" * 65, f"request body: nested deeper than {MAX_JSON_DEPTH} levels"),
        # Encoded surrogates and UTF-16 are not UTF-8 (json.loads takes both).
        (b'"\xed\xa0\x80"', "request body: not UTF-8 (invalid continuation byte at byte 1)"),
        ('"x"'.encode("utf-16"), "request body: not UTF-8"),
        (b'{"a": 1,}', "request body: not valid JSON (Expecting property name enclosed in double quotes at column 9)"),
        (b"{\n\n}x", "not valid JSON (Extra data at line 3 column 2)"),
    ],
)
def test_refusals_name_the_place_and_the_problem(raw: bytes, message: str) -> None:
    with pytest.raises(JsonInputError) as caught:
        loads_bounded(raw)
    assert message in caught.value.message


def test_a_root_prefixes_the_place() -> None:
    with pytest.raises(JsonInputError, match=r"^line\.body\.stop\[1\]: not valid Unicode"):
        loads_bounded('{"body": {"stop": ["ok", "\\ud800"]}}', root="line")


def test_pairs_and_the_deepest_allowed_nesting_pass() -> None:
    assert loads_bounded(b'"\\ud83d\\ude00"') == "\U0001f600"
    deepest = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    assert loads_bounded(deepest) == json.loads(deepest)


# Text with surrogates too (Hypothesis leaves them out by default).
any_text = st.text(st.characters(exclude_categories=()), max_size=8)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | any_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=30,
)


def holds_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return any(0xD800 <= ord(ch) <= 0xDFFF for ch in value)
    if isinstance(value, list):
        return any(holds_surrogate(item) for item in value)
    if isinstance(value, dict):
        return any(holds_surrogate(key) or holds_surrogate(item) for key, item in value.items())
    return False


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_text_decodes_as_json_loads_does_unless_it_holds_a_surrogate(value: Any) -> None:
    # ensure_ascii escapes every non-ASCII character, surrogates included;
    # json.loads joins a high and a low surrogate that meet into one character.
    raw = json.dumps(value).encode()
    if holds_surrogate(json.loads(raw)):
        with pytest.raises(JsonInputError, match="lone UTF-16 surrogate"):
            loads_bounded(raw)
    else:
        assert loads_bounded(raw) == json.loads(raw)
