import grpc
import pytest

from headrace.runtime import errors


@pytest.mark.parametrize(
    ("error", "code", "http"),
    [
        (errors.InvalidArgument("x"), grpc.StatusCode.INVALID_ARGUMENT, 400),
        (errors.Unauthenticated("x"), grpc.StatusCode.UNAUTHENTICATED, 401),
        (errors.NotFound("x"), grpc.StatusCode.NOT_FOUND, 404),
        # The request's fault, not load: never RESOURCE_EXHAUSTED.
        (errors.PayloadTooLarge("x"), grpc.StatusCode.INVALID_ARGUMENT, 413),
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


def test_a_payload_too_large_keeps_its_kind_across_a_hop() -> None:
    error = errors.PayloadTooLarge("file: 9000000 bytes is over the limit of 8000000")
    trailers = errors.status_trailers(error)
    assert trailers == (("headrace-error", "payload-too-large"),)
    rebuilt = errors.error_from_status(errors.status_code_for(error), error.message, trailers)
    assert isinstance(rebuilt, errors.PayloadTooLarge) and rebuilt.message == error.message
    # Without the trailer, INVALID_ARGUMENT is a plain 400.
    assert type(errors.error_from_status(grpc.StatusCode.INVALID_ARGUMENT, "x", ())) is errors.InvalidArgument


@pytest.mark.parametrize(
    ("details", "expected"),
    [
        ("SERVER: Received message larger than max (2000001 vs. 1048576)", errors.PayloadTooLarge),
        ("CLIENT: Sent message larger than max (2001 vs. 1000)", errors.PayloadTooLarge),
        ("received metadata size exceeds hard limit (value length 20000 vs. 16384)", errors.PayloadTooLarge),
        ("Stream removed (CLIENT: Received message larger than max (2 vs. 1))", errors.Internal),
        ("queue full", errors.ResourceExhausted),
    ],
)
def test_grpc_size_checks_never_pass_for_load(details: str, expected: type[errors.HeadraceError]) -> None:
    rebuilt = errors.error_from_status(grpc.StatusCode.RESOURCE_EXHAUSTED, details, ())
    assert type(rebuilt) is expected
    assert details in rebuilt.message
    assert errors.http_status_for(rebuilt) != 429 or expected is errors.ResourceExhausted


@pytest.mark.parametrize(
    ("number", "code"),
    [
        (0, grpc.StatusCode.OK),
        (8, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (14, grpc.StatusCode.UNAVAILABLE),
        # A number no gRPC code has (a peer of another version, a bad message): UNKNOWN, never a KeyError.
        (99, grpc.StatusCode.UNKNOWN),
        (-1, grpc.StatusCode.UNKNOWN),
    ],
)
def test_a_status_code_carried_as_a_number(number: int, code: grpc.StatusCode) -> None:
    assert errors.status_code_numbered(number) is code


@pytest.mark.parametrize(
    ("code", "details", "missing"),
    [
        (grpc.StatusCode.UNIMPLEMENTED, "Method not found!", True),
        (grpc.StatusCode.UNIMPLEMENTED, "Method not implemented!", True),
        # The method exists and said UNIMPLEMENTED itself: the call's error.
        (grpc.StatusCode.UNIMPLEMENTED, "this engine cannot do that", False),
        (grpc.StatusCode.UNIMPLEMENTED, None, False),
        (grpc.StatusCode.NOT_FOUND, "Method not found!", False),
    ],
)
def test_no_such_method_is_grpcs_own_answer_for_a_missing_method(
    code: grpc.StatusCode, details: str | None, missing: bool
) -> None:
    exc = grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)
    assert errors.no_such_method(exc) is missing
