"""Token counts guessed from text, where no tokenizer is at hand (placement
hints, rate-limit reservations, batch row leases): about 4 characters per
token for English text. The rule lives here only."""

from __future__ import annotations

from headrace.v1 import generation_pb2

CHARS_PER_TOKEN = 4


def estimate_tokens(chars: int) -> int:
    """At least 1: an empty text still takes a position."""
    return max(1, chars // CHARS_PER_TOKEN)


def estimate_prompt_tokens(request: generation_pb2.GenerateRequest) -> int:
    return estimate_tokens(len(request.prompt) + sum(len(m.content) for m in request.messages))
