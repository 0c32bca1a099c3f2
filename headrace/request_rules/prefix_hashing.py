"""Hashes of a prompt's leading blocks, for prefix-affinity placement.

The router has no tokenizer of the model (loading one per model would tie
every router to every model's files), so it hashes fixed-size blocks of
the prompt's *text* instead of its tokens: identical leading text
tokenizes to identical leading tokens, so two prompts that share their
first N blocks of text share roughly their first N x BLOCK_CHARS / 4
tokens of KV cache on a worker that served one of them. That is all
routing needs; the engine's own prefix cache stays exact.

A chat conversation is hashed as its messages in order, each as role,
name and content with separators that cannot appear in a role, so the
same system prompt (and the same earlier turns) give the same leading
blocks whatever follows. Hashes are chained (each covers the whole prefix
up to its block), shortest first, keyed by the model version (the same
text on another model shares no cache), and only full blocks count: a
partial block is not a shared prefix yet.

blake2b, not Python's hash(): every router and scheduler replica must
compute the same values.
"""

from __future__ import annotations

import hashlib

from headrace.v1 import generation_pb2

# ~64 tokens of English text per block.
BLOCK_CHARS = 256
# At most this many blocks (16 KiB of text) are hashed; deeper prefixes
# add little to the choice of worker.
MAX_BLOCKS = 64

_FIELD = "\x1f"
_MESSAGE = "\x1e"


def prompt_text(request: generation_pb2.GenerateRequest, *, max_chars: int | None = None) -> str:
    """The request's prompt as one canonical string (chat: every message
    with its role and name)."""
    if request.prompt:
        return request.prompt[:max_chars] if max_chars is not None else request.prompt
    parts: list[str] = []
    length = 0
    for message in request.messages:
        part = f"{message.role}{_FIELD}{message.name}{_FIELD}{message.content}{_MESSAGE}"
        parts.append(part)
        length += len(part)
        if max_chars is not None and length >= max_chars:
            break
    text = "".join(parts)
    return text[:max_chars] if max_chars is not None else text


def prefix_hashes(
    text: str, *, namespace: str = "", block_chars: int = BLOCK_CHARS, max_blocks: int = MAX_BLOCKS
) -> list[int]:
    """Chained 64-bit hashes of the text's full leading blocks, shortest
    prefix first: hashes[i] identifies text[: (i + 1) * block_chars]."""
    if block_chars < 1 or max_blocks < 0:
        raise ValueError("block_chars must be >= 1 and max_blocks >= 0")
    blocks = min(len(text) // block_chars, max_blocks)
    digest = hashlib.blake2b(namespace.encode(), digest_size=8).digest()
    hashes: list[int] = []
    for index in range(blocks):
        block = text[index * block_chars : (index + 1) * block_chars]
        digest = hashlib.blake2b(digest + block.encode("utf-8", "surrogatepass"), digest_size=8).digest()
        hashes.append(int.from_bytes(digest, "big"))
    return hashes


def request_prefix_hashes(
    request: generation_pb2.GenerateRequest,
    model_version: str,
    *,
    block_chars: int = BLOCK_CHARS,
    max_blocks: int = MAX_BLOCKS,
) -> list[int]:
    """What the router puts in PlaceRequest.prefix_hashes."""
    text = prompt_text(request, max_chars=block_chars * max_blocks)
    return prefix_hashes(text, namespace=model_version, block_chars=block_chars, max_blocks=max_blocks)
