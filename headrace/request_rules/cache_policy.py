"""Which requests the response cache may answer and store. Shared by the
router (to skip a pointless lookup) and the cache service (which decides)."""

from __future__ import annotations

from headrace.v1 import generation_pb2


def is_deterministic(request: generation_pb2.GenerateRequest) -> bool:
    """Greedy decoding or a fixed seed: the same request gets the same answer."""
    sampling = request.sampling
    if sampling.HasField("seed"):
        return True
    return sampling.HasField("temperature") and sampling.temperature == 0.0


def bypass_reason(request: generation_pb2.GenerateRequest) -> str | None:
    """Why the cache may not answer this request, or None if it may."""
    if request.cache.no_cache:
        return "no-cache"
    if not is_deterministic(request) and not request.cache.allow_nondeterministic:
        return "nondeterministic"
    return None


def no_store_reason(request: generation_pb2.GenerateRequest, response: generation_pb2.GenerateResponse) -> str | None:
    """Why an answer may not be stored, or None if it may."""
    if request.cache.no_store:
        return "no-store"
    if not is_deterministic(request) and not request.cache.allow_nondeterministic:
        return "nondeterministic"
    if response.finish_reason not in (generation_pb2.FINISH_REASON_STOP, generation_pb2.FINISH_REASON_LENGTH):
        return "incomplete"
    return None
