"""What the semantic cache matches on.

Only the last user turn is matched by meaning; everything before it (the
system prompt, earlier turns, participant names) and every sampling
parameter must match exactly, as a `scope` hash. Why not one embedding of
the whole conversation: such an embedding is dominated by what the turns
have in common, so "And its population?" after "What is the capital of
France?" and after "... of Spain?" would embed alike and answer each other.
An exact context plus a semantic last turn cannot confuse them; it gives up
hits in conversations that differ only in wording earlier on, the safe side.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from headrace.v1 import generation_pb2
from services.cache.partition import Partition, digest
from services.cache.request_key import normalized_request


@dataclass(frozen=True)
class SemanticKey:
    # Exact part: partition, context and sampling, hashed.
    scope: str
    # Semantic part: the last user turn (or the whole prompt).
    text: str


def semantic_key(partition: Partition, request: generation_pb2.GenerateRequest) -> SemanticKey | None:
    """The key, or None when the request has no user turn last (an
    assistant prefill or a tool result is answered from the exact cache only)."""
    body = normalized_request(request)
    if request.messages:
        last = request.messages[-1]
        if last.role != "user" or not last.content.strip():
            return None
        shape = {"mode": "chat", "context": body["messages"][:-1], "last_name": last.name}
        text = last.content
    else:
        if not request.prompt.strip():
            return None
        shape = {"mode": "prompt", "context": [], "last_name": ""}
        text = request.prompt
    shape["sampling"] = body["sampling"]
    canonical = json.dumps(shape, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return SemanticKey(scope=digest("scope", partition.tenant, partition.model_version, canonical), text=text)


def semantic_requested(policy: generation_pb2.CachePolicy, default_on: bool) -> bool:
    """CachePolicy.semantic when set, the service's default otherwise."""
    if policy.HasField("semantic"):
        return bool(policy.semantic)
    return default_on
