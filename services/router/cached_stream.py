"""A cache hit, streamed: the stored answer replayed in the deltas it was
generated in (an entry stored without them is cut into word-sized pieces),
the first delta carrying model and route (the route says which cache hit,
with similarity and entry id), the last the finish reason, usage and timing.
No cost: no engine ran."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

from headrace.v1 import cache_pb2, generation_pb2

_WORD_SIZED = re.compile(r"\s*\S+\s*|\s+")


def _pieces(lookup: cache_pb2.CacheLookupResponse) -> list[tuple[str, list[int]]]:
    cached = lookup.response
    if lookup.deltas and "".join(d.text for d in lookup.deltas) == cached.text:
        return [(d.text, list(d.token_ids)) for d in lookup.deltas]
    words = _WORD_SIZED.findall(cached.text) or [""]
    # Without the deltas there is no telling which ids belong to which word.
    return [(word, []) for word in words[:-1]] + [(words[-1], list(cached.token_ids))]


def cached_stream(
    lookup: cache_pb2.CacheLookupResponse, route: generation_pb2.RouteInfo, request_id: str, started: float
) -> Iterator[generation_pb2.GenerateStreamResponse]:
    cached = lookup.response
    pieces = _pieces(lookup)
    ttft_ms = 0.0
    for index, (text, token_ids) in enumerate(pieces):
        chunk = generation_pb2.GenerateStreamResponse(request_id=request_id, text=text, token_ids=token_ids)
        if index == 0:
            ttft_ms = (time.monotonic() - started) * 1000.0
            chunk.route.CopyFrom(route)
            chunk.model = route.model_version
        if index == len(pieces) - 1:
            total_ms = (time.monotonic() - started) * 1000.0
            chunk.finish_reason = cached.finish_reason
            chunk.usage.CopyFrom(cached.usage)
            chunk.timing.CopyFrom(generation_pb2.Timing(ttft_ms=ttft_ms, total_ms=total_ms))
            chunk.cost.CopyFrom(generation_pb2.Cost())
        yield chunk


def deltas_of(texts: list[str], token_ids: list[int], token_counts: list[int]) -> list[cache_pb2.CachedDelta]:
    """The streamed answer as CachedDelta messages, for the cache to keep."""
    deltas = []
    offset = 0
    for text, count in zip(texts, token_counts, strict=True):
        deltas.append(cache_pb2.CachedDelta(text=text, token_ids=token_ids[offset : offset + count]))
        offset += count
    return deltas
