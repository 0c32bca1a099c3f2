import pytest

from headrace.runtime.errors import InvalidArgument
from headrace.v1 import generation_pb2, scheduler_pb2
from services.scheduler.server import MAX_PREFIX_HASHES, placement_from_proto


def place(**fields: object) -> scheduler_pb2.PlaceRequest:
    return scheduler_pb2.PlaceRequest(request_id="r", model_version="m@1", **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("priority", "queue_class"),
    [
        (generation_pb2.PRIORITY_INTERACTIVE, 0),
        (generation_pb2.PRIORITY_STANDARD, 1),
        (generation_pb2.PRIORITY_UNSPECIFIED, 1),
        (generation_pb2.PRIORITY_BATCH, 2),
    ],
)
def test_priorities_map_onto_the_queue_classes(priority: int, queue_class: int) -> None:
    assert placement_from_proto(place(priority=priority)).priority == queue_class


@pytest.mark.parametrize(
    ("fields", "field_named"),
    [
        ({"request_id": ""}, "request_id"),
        ({"model_version": "no-version"}, "model_version"),
        ({"priority": 9}, "priority"),
        ({"prefix_hashes": list(range(MAX_PREFIX_HASHES + 1))}, "prefix_hashes"),
        ({"exclude_workers": [f"w{i}" for i in range(100)]}, "exclude_workers"),
    ],
)
def test_bad_place_requests_name_the_field(fields: dict[str, object], field_named: str) -> None:
    request = place()
    for name, value in fields.items():
        if isinstance(value, list):
            getattr(request, name).extend(value)
        else:
            setattr(request, name, value)
    with pytest.raises(InvalidArgument, match=field_named):
        placement_from_proto(request)
