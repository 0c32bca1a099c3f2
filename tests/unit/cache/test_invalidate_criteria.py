import pytest

from headrace.runtime.errors import InvalidArgument
from headrace.v1 import cache_pb2
from services.cache.entry_store import InvalidateCriteria
from services.cache.server import criteria_from

ID = "ab" * 32


def test_every_field_set_must_match() -> None:
    criteria = InvalidateCriteria(tenant="t", model="m", tags=("doc-1", "doc-2"))
    assert criteria.matches("t", "m@1", ["doc-2"])
    assert not criteria.matches("u", "m@1", ["doc-2"])
    assert not criteria.matches("t", "m2@1", ["doc-2"])
    assert not criteria.matches("t", "m@1", ["doc-3"])
    assert InvalidateCriteria(tenant="t").matches("t", "anything@7", [])
    assert not InvalidateCriteria(tenant="t", model_version="m@1").matches("t", "m@2", [])
    # "m" is not a prefix match: model "m" does not cover "mx@1".
    assert not InvalidateCriteria(tenant="t", model="m").matches("t", "mx@1", [])


def test_the_narrowest_criterion_is_the_watermark() -> None:
    assert len(InvalidateCriteria(tenant="t", tags=("a", "b"), model="m").watermarks()) == 2
    assert InvalidateCriteria(tenant="t", model="m").watermarks() != InvalidateCriteria(tenant="t").watermarks()
    assert InvalidateCriteria(tenant="t").watermarks() != InvalidateCriteria(tenant="u").watermarks()


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (cache_pb2.InvalidateRequest(), "tenant: required"),
        (cache_pb2.InvalidateRequest(tenant="t", model_version="m"), "model_version"),
        (cache_pb2.InvalidateRequest(tenant="t", model="m", model_version="n@1"), "is not a version of model"),
        (cache_pb2.InvalidateRequest(tenant="t", model="m@1"), "model: a model name"),
        (cache_pb2.InvalidateRequest(tenant="t", entry_ids=["../etc"]), "entry_ids"),
        (cache_pb2.InvalidateRequest(tenant="t", entry_ids=[ID] * 1025), "entry_ids: at most"),
    ],
)
def test_bad_invalidations_are_refused_naming_the_field(request_: cache_pb2.InvalidateRequest, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        criteria_from(request_)


def test_a_valid_request_becomes_criteria() -> None:
    criteria = criteria_from(cache_pb2.InvalidateRequest(tenant="t", model="m", tags=["x"], entry_ids=[ID]))
    assert criteria == InvalidateCriteria(tenant="t", model="m", tags=("x",), entry_ids=(ID,))
