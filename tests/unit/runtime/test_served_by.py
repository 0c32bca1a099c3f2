from headrace.request_rules.served_by import CACHE_SIMILARITY_KEY, served_by_headers
from headrace.v1 import generation_pb2


def route(**fields: object) -> generation_pb2.RouteInfo:
    return generation_pb2.RouteInfo(model_version="smollm2@1", reason="default", **fields)  # type: ignore[arg-type]


def test_a_semantic_hit_says_its_similarity_and_the_verdict() -> None:
    headers = dict(
        served_by_headers(
            "r1",
            route(
                cache=generation_pb2.CACHE_OUTCOME_HIT_SEMANTIC,
                cache_similarity=0.93125,
                cache_verdict="lexical:accept",
            ),
        )
    )
    assert headers["x-headrace-cache"] == "hit-semantic"
    assert headers[CACHE_SIMILARITY_KEY] == "0.9312; verdict=lexical:accept"


def test_other_answers_carry_no_similarity() -> None:
    for outcome in (generation_pb2.CACHE_OUTCOME_HIT_EXACT, generation_pb2.CACHE_OUTCOME_MISS):
        headers = dict(served_by_headers("r1", route(cache=outcome, cache_similarity=1.0)))
        assert CACHE_SIMILARITY_KEY not in headers
