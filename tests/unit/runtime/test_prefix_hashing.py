import os
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headrace.request_rules.prefix_hashing import (
    BLOCK_CHARS,
    MAX_BLOCKS,
    prefix_hashes,
    prompt_text,
    request_prefix_hashes,
)
from headrace.v1 import generation_pb2

SYSTEM = "You are a careful assistant for a water mill. " * 30


def chat(*turns: tuple[str, str]) -> generation_pb2.GenerateRequest:
    return generation_pb2.GenerateRequest(
        messages=[generation_pb2.ChatMessage(role=role, content=content) for role, content in turns]
    )


def test_one_hash_per_full_block_chained_shortest_first() -> None:
    text = "x" * (3 * 16 + 5)
    hashes = prefix_hashes(text, block_chars=16)
    assert len(hashes) == 3  # the partial block is not a prefix yet
    assert len(set(hashes)) == 3  # chained: equal blocks, different prefixes
    assert all(0 <= h < 2**64 for h in hashes)
    assert prefix_hashes(text[:32], block_chars=16) == hashes[:2]
    assert prefix_hashes("short", block_chars=16) == []


# No per-example deadline: the machine is shared, and this is about results, not speed.
@settings(deadline=None)
@given(
    common=st.text(min_size=0, max_size=200), a=st.text(min_size=1, max_size=100), b=st.text(min_size=1, max_size=100)
)
def test_prompts_agree_exactly_as_far_as_their_full_blocks_agree(common: str, a: str, b: str) -> None:
    first, second = common + "A" + a, common + "B" + b
    hashes_1, hashes_2 = prefix_hashes(first, block_chars=8), prefix_hashes(second, block_chars=8)
    shared = len(common) // 8
    assert hashes_1[:shared] == hashes_2[:shared]
    if len(hashes_1) > shared and len(hashes_2) > shared:
        assert hashes_1[shared] != hashes_2[shared]


def test_a_shared_system_prompt_gives_shared_leading_hashes_whatever_the_question() -> None:
    one = request_prefix_hashes(chat(("system", SYSTEM), ("user", "Where is the sluice?")), "smollm2@1")
    two = request_prefix_hashes(chat(("system", SYSTEM), ("user", "How fast is the wheel?")), "smollm2@1")
    shared = len(SYSTEM) // BLOCK_CHARS
    assert shared >= 4
    assert one[:shared] == two[:shared]
    # The role is part of the text: the same words as a user turn differ.
    as_user = request_prefix_hashes(chat(("user", SYSTEM)), "smollm2@1")
    assert as_user[0] != one[0]


def test_the_model_version_separates_otherwise_equal_prompts() -> None:
    request = generation_pb2.GenerateRequest(prompt=SYSTEM)
    assert request_prefix_hashes(request, "a@1")[0] != request_prefix_hashes(request, "a@2")[0]


def test_bounded_however_long_the_prompt() -> None:
    huge = generation_pb2.GenerateRequest(prompt="y" * (BLOCK_CHARS * MAX_BLOCKS * 4))
    assert len(request_prefix_hashes(huge, "m@1")) == MAX_BLOCKS
    many = chat(*[("user", "z" * 1000)] * 500)
    assert len(prompt_text(many, max_chars=5000)) == 5000
    assert len(request_prefix_hashes(many, "m@1")) == MAX_BLOCKS
    with pytest.raises(ValueError, match="block_chars"):
        prefix_hashes("abc", block_chars=0)


def test_every_process_computes_the_same_hashes() -> None:
    """Routers and scheduler replicas must agree: no per-process salt."""
    code = (
        "from headrace.request_rules.prefix_hashing import prefix_hashes; "
        f"print(prefix_hashes({SYSTEM!r}, namespace='m@1'))"
    )
    output = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONHASHSEED": "12345"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert output == f"{prefix_hashes(SYSTEM, namespace='m@1')}\n"
