"""The exact-cache key: a hash of the tenant, the model version and the
whole normalized request (every message of the conversation and every
sampling parameter that changes the output). Fields that do not change the
answer (session, user, priority, tags, cache policy) stay out of it."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from headrace.v1 import generation_pb2

_SAMPLING_FIELDS = (
    "temperature",
    "top_p",
    "top_k",
    "max_tokens",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "min_tokens",
)


def normalized_request(request: generation_pb2.GenerateRequest) -> dict[str, Any]:
    sampling = request.sampling
    normalized_sampling: dict[str, Any] = {
        name: getattr(sampling, name)
        for name in _SAMPLING_FIELDS
        if sampling.HasField(name)  # type: ignore[arg-type]
    }
    if sampling.stop:
        normalized_sampling["stop"] = list(sampling.stop)
    if sampling.ignore_eos:
        normalized_sampling["ignore_eos"] = True
    body: dict[str, Any] = {"sampling": normalized_sampling}
    if request.messages:
        body["messages"] = [[m.role, m.content, m.name] for m in request.messages]
    else:
        body["prompt"] = request.prompt
    return body


def exact_key(tenant: str, model_version: str, request: generation_pb2.GenerateRequest) -> str:
    canonical = json.dumps(
        {"tenant": tenant, "model_version": model_version, "request": normalized_request(request)},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()
