import grpc
import pytest

from headrace.runtime import errors


@pytest.mark.parametrize(
    ("error", "code", "http"),
    [
        (errors.InvalidArgument("x"), grpc.StatusCode.INVALID_ARGUMENT, 400),
        (errors.Unauthenticated("x"), grpc.StatusCode.UNAUTHENTICATED, 401),
        (errors.NotFound("x"), grpc.StatusCode.NOT_FOUND, 404),
        (errors.PayloadTooLarge("x"), grpc.StatusCode.RESOURCE_EXHAUSTED, 413),
        (errors.QueueFull("x"), grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
        (errors.RateLimited("x"), grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
        (errors.NoWorkerAvailable("x"), grpc.StatusCode.UNAVAILABLE, 503),
        (errors.DeadlineExceeded("x"), grpc.StatusCode.DEADLINE_EXCEEDED, 504),
        (errors.Unimplemented("x"), grpc.StatusCode.UNIMPLEMENTED, 501),
        (errors.Internal("x"), grpc.StatusCode.INTERNAL, 500),
    ],
)
def test_every_error_maps_to_one_status_and_http_code(
    error: errors.HeadraceError, code: grpc.StatusCode, http: int
) -> None:
    assert errors.status_code_for(error) is code
    assert errors.http_status_for(error) == http


def test_every_class_in_the_module_has_a_mapping() -> None:
    classes = [obj for obj in vars(errors).values() if isinstance(obj, type) and issubclass(obj, errors.HeadraceError)]
    for cls in classes:
        # Walking the MRO always ends at a row; rows exist for each direct child.
        assert errors.mapping_for(cls("m")) is not None
    direct_children = [c for c in classes if c.__bases__ == (errors.HeadraceError,)]
    assert all(c in errors.ERROR_TABLE for c in direct_children)


def test_retry_after_travels_as_trailing_metadata_and_back() -> None:
    error = errors.QueueFull("queue full", retry_after_s=1.2)
    trailing = errors.trailing_metadata_for(error)
    assert trailing == (("retry-after", "2"),)
    rebuilt = errors.error_from_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full", trailing)
    assert isinstance(rebuilt, errors.ResourceExhausted)
    assert rebuilt.retry_after_s == 2.0
    assert str(rebuilt) == "queue full"


def test_unknown_codes_become_internal() -> None:
    rebuilt = errors.error_from_status(grpc.StatusCode.DATA_LOSS, None)
    assert isinstance(rebuilt, errors.Internal)
    assert rebuilt.message == "data_loss"
