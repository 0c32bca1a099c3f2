import time

from headrace.v1 import cache_pb2, generation_pb2
from services.router.cached_stream import cached_stream, deltas_of

ROUTE = generation_pb2.RouteInfo(
    model_version="m@1", cache=generation_pb2.CACHE_OUTCOME_HIT_SEMANTIC, cache_similarity=0.95, cache_entry_id="e"
)


def lookup(text: str, deltas: list[cache_pb2.CachedDelta]) -> cache_pb2.CacheLookupResponse:
    return cache_pb2.CacheLookupResponse(
        outcome=generation_pb2.CACHE_OUTCOME_HIT_SEMANTIC,
        response=generation_pb2.GenerateResponse(
            text=text,
            token_ids=[t for d in deltas for t in d.token_ids] or [1, 2, 3],
            finish_reason=generation_pb2.FINISH_REASON_STOP,
            usage=generation_pb2.Usage(prompt_tokens=4, completion_tokens=3, total_tokens=7),
            cost=generation_pb2.Cost(usd=1.0, engine_seconds=2.0),
        ),
        deltas=deltas,
    )


def test_a_hit_replays_the_deltas_it_was_streamed_in() -> None:
    deltas = deltas_of(["Hel", "lo", " world"], [7, 8, 9, 10], [1, 1, 2])
    assert [list(d.token_ids) for d in deltas] == [[7], [8], [9, 10]]
    chunks = list(cached_stream(lookup("Hello world", deltas), ROUTE, "req", time.monotonic()))
    assert [c.text for c in chunks] == ["Hel", "lo", " world"]
    assert [list(c.token_ids) for c in chunks] == [[7], [8], [9, 10]]
    first, last = chunks[0], chunks[-1]
    assert first.route == ROUTE and first.model == "m@1"
    assert all(not c.HasField("route") for c in chunks[1:])
    assert last.finish_reason == generation_pb2.FINISH_REASON_STOP and last.usage.completion_tokens == 3
    assert all(not c.finish_reason for c in chunks[:-1])
    # No engine ran: no cost.
    assert last.cost.usd == 0 and last.cost.engine_seconds == 0
    assert all(c.request_id == "req" for c in chunks)


def test_an_entry_without_deltas_streams_in_word_sized_pieces() -> None:
    chunks = list(cached_stream(lookup("one two  three", []), ROUTE, "req", time.monotonic()))
    assert "".join(c.text for c in chunks) == "one two  three"
    assert len(chunks) == 3
    assert [t for c in chunks for t in c.token_ids] == [1, 2, 3]


def test_deltas_that_do_not_add_up_to_the_text_are_not_trusted() -> None:
    bad = [cache_pb2.CachedDelta(text="other")]
    chunks = list(cached_stream(lookup("real text", bad), ROUTE, "req", time.monotonic()))
    assert "".join(c.text for c in chunks) == "real text"


def test_an_empty_answer_is_still_one_final_chunk() -> None:
    chunks = list(cached_stream(lookup("", []), ROUTE, "req", time.monotonic()))
    assert len(chunks) == 1 and chunks[0].finish_reason == generation_pb2.FINISH_REASON_STOP
