"""One error hierarchy for Headrace, mapped to gRPC status codes and HTTP
statuses in one table.

    HeadraceError                  INTERNAL             500
    ├── InvalidArgument            INVALID_ARGUMENT     400
    ├── Unauthenticated            UNAUTHENTICATED      401
    ├── PermissionDenied           PERMISSION_DENIED    403
    ├── NotFound                   NOT_FOUND            404
    ├── FailedPrecondition         FAILED_PRECONDITION  409
    ├── PayloadTooLarge            INVALID_ARGUMENT     413  (+ headrace-error trailer)
    ├── ResourceExhausted          RESOURCE_EXHAUSTED   429  (+ retry-after)
    │   ├── QueueFull
    │   └── RateLimited
    ├── Cancelled                  CANCELLED            499
    ├── Unimplemented              UNIMPLEMENTED        501
    ├── Unavailable                UNAVAILABLE          503  (+ retry-after)
    │   ├── NoWorkerAvailable
    │   └── Preempted              ABORTED              503
    ├── DeadlineExceeded           DEADLINE_EXCEEDED    504
    └── Internal                   INTERNAL             500

RESOURCE_EXHAUSTED means load (retry later) and nothing else: a request
over a size limit is the request's fault, INVALID_ARGUMENT over gRPC and
413 over HTTP. gRPC's own size checks answer RESOURCE_EXHAUSTED before any
handler runs ("Received message larger than max", "metadata size exceeds
... limit"); `error_from_status` reads those as PayloadTooLarge (or, for an
answer too large to receive, Internal), so they never pass for load.

Domain code raises these; the server's error interceptor turns them into a
gRPC status with the message and, where it applies, a `retry-after`
trailer (seconds). Clients turn a status back into the same class with
`from_rpc_error`, so an error keeps its meaning across every hop.
"""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import grpc
import grpc.aio

RETRY_AFTER_KEY = "retry-after"
# Names an error whose gRPC code is shared with others (see status_trailers).
ERROR_KIND_KEY = "headrace-error"


class HeadraceError(Exception):
    """Base of every error Headrace reports to a caller."""

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s

    def __str__(self) -> str:
        return self.message


class InvalidArgument(HeadraceError):
    """The request is malformed or a value is out of range."""


class Unauthenticated(HeadraceError):
    """No or an unknown API key."""


class PermissionDenied(HeadraceError):
    """The tenant may not do this."""


class NotFound(HeadraceError):
    """An unknown model, batch, file or lease."""


class FailedPrecondition(HeadraceError):
    """The request is valid but the system is not in a state to run it."""


class PayloadTooLarge(HeadraceError):
    """A request body or message over its size limit."""


class ResourceExhausted(HeadraceError):
    """Over a bound: retry later (see retry_after_s)."""


class QueueFull(ResourceExhausted):
    """The model's admission queue is full."""


class RateLimited(ResourceExhausted):
    """The tenant is over its rate limit or quota."""


class Cancelled(HeadraceError):
    """The caller cancelled."""


class Unimplemented(HeadraceError):
    """A capability that does not exist (yet)."""


class Unavailable(HeadraceError):
    """A dependency is down or has no capacity; retrying may help."""


class NoWorkerAvailable(Unavailable):
    """No live worker serves the model."""


class Preempted(Unavailable):
    """A batch row stopped to make room for online work; its consumer
    retries it (once, not preemptible)."""


class DeadlineExceeded(HeadraceError):
    """The request's deadline passed."""


class Internal(HeadraceError):
    """A bug or an unexpected failure."""


@dataclass(frozen=True)
class ErrorMapping:
    code: grpc.StatusCode
    http_status: int
    # OpenAI's error "type" for the HTTP gateway's error body.
    openai_type: str


# The one table. Lookups walk the class's MRO, so a subclass without a row
# maps like its parent.
ERROR_TABLE: dict[type[HeadraceError], ErrorMapping] = {
    HeadraceError: ErrorMapping(grpc.StatusCode.INTERNAL, 500, "server_error"),
    InvalidArgument: ErrorMapping(grpc.StatusCode.INVALID_ARGUMENT, 400, "invalid_request_error"),
    Unauthenticated: ErrorMapping(grpc.StatusCode.UNAUTHENTICATED, 401, "authentication_error"),
    PermissionDenied: ErrorMapping(grpc.StatusCode.PERMISSION_DENIED, 403, "permission_error"),
    NotFound: ErrorMapping(grpc.StatusCode.NOT_FOUND, 404, "not_found_error"),
    FailedPrecondition: ErrorMapping(grpc.StatusCode.FAILED_PRECONDITION, 409, "invalid_request_error"),
    PayloadTooLarge: ErrorMapping(grpc.StatusCode.INVALID_ARGUMENT, 413, "invalid_request_error"),
    ResourceExhausted: ErrorMapping(grpc.StatusCode.RESOURCE_EXHAUSTED, 429, "rate_limit_error"),
    Cancelled: ErrorMapping(grpc.StatusCode.CANCELLED, 499, "cancelled"),
    Unimplemented: ErrorMapping(grpc.StatusCode.UNIMPLEMENTED, 501, "not_implemented"),
    Unavailable: ErrorMapping(grpc.StatusCode.UNAVAILABLE, 503, "service_unavailable"),
    Preempted: ErrorMapping(grpc.StatusCode.ABORTED, 503, "service_unavailable"),
    DeadlineExceeded: ErrorMapping(grpc.StatusCode.DEADLINE_EXCEEDED, 504, "timeout"),
    Internal: ErrorMapping(grpc.StatusCode.INTERNAL, 500, "server_error"),
}

# gRPC code -> the class a client raises for it. Codes without a class of
# their own (UNKNOWN, DATA_LOSS, ...) become Internal.
_CLASS_FOR_CODE: dict[grpc.StatusCode, type[HeadraceError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.ALREADY_EXISTS: FailedPrecondition,
    grpc.StatusCode.ABORTED: Unavailable,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
}


# Errors told apart by the ERROR_KIND_KEY trailer, by its value.
_KIND_CLASSES: dict[str, type[HeadraceError]] = {"payload-too-large": PayloadTooLarge}


def mapping_for(error: HeadraceError) -> ErrorMapping:
    for cls in type(error).__mro__:
        mapping = ERROR_TABLE.get(cls)  # type: ignore[call-overload]
        if mapping is not None:
            return mapping
    return ERROR_TABLE[HeadraceError]


def status_code_for(error: HeadraceError) -> grpc.StatusCode:
    return mapping_for(error).code


def http_status_for(error: HeadraceError) -> int:
    return mapping_for(error).http_status


def trailing_metadata_for(error: HeadraceError) -> tuple[tuple[str, str], ...]:
    if error.retry_after_s is None:
        return ()
    # Whole seconds, rounded up, like HTTP's Retry-After.
    return ((RETRY_AFTER_KEY, str(max(1, math.ceil(error.retry_after_s)))),)


def status_trailers(error: HeadraceError) -> tuple[tuple[str, str], ...]:
    """Trailing metadata for `error`'s gRPC status: retry-after, and the
    error's kind where its code alone would lose it (413 travels as
    INVALID_ARGUMENT)."""
    kind = next((name for name, cls in _KIND_CLASSES.items() if isinstance(error, cls)), None)
    return trailing_metadata_for(error) + (((ERROR_KIND_KEY, kind),) if kind else ())


def _size_limit_error(details: str) -> HeadraceError | None:
    """gRPC's own size checks, which answer RESOURCE_EXHAUSTED: the request
    (or its metadata) over a limit, or an answer too large to receive."""
    if "CLIENT: Received message larger than max" in details:
        return Internal(
            f"an answer from another service is over the message size limit (limits.max_message_bytes): {details}"
        )
    if "message larger than max" in details or "metadata size exceeds" in details:
        return PayloadTooLarge(f"request: over a size limit: {details}")
    return None


_CODES_BY_NUMBER: dict[int, grpc.StatusCode] = {code.value[0]: code for code in grpc.StatusCode}


# What a gRPC server answers for a method it does not have (grpc's own
# "Method not found!"), or a generated servicer for one left to its base
# class ("Method not implemented!").
_NO_SUCH_METHOD_DETAILS = ("Method not found!", "Method not implemented!")


def no_such_method(exc: grpc.aio.AioRpcError) -> bool:
    """The server has no such method (an older version of a service), not an
    UNIMPLEMENTED the method itself raised (that one is the call's error)."""
    details = exc.details() or ""
    return exc.code() == grpc.StatusCode.UNIMPLEMENTED and any(d in details for d in _NO_SUCH_METHOD_DETAILS)


def status_code_numbered(number: int) -> grpc.StatusCode:
    """The status code a message carries as its number (google.rpc.Code);
    UNKNOWN for a number gRPC does not define."""
    return _CODES_BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN)


def error_from_status(
    code: grpc.StatusCode,
    details: str | None,
    trailing_metadata: Sequence[tuple[str, str | bytes]] | None = None,
) -> HeadraceError:
    """Rebuild the Headrace error a peer reported as a gRPC status."""
    retry_after: float | None = None
    kind: str | None = None
    for key, value in trailing_metadata or ():
        if key == ERROR_KIND_KEY:
            kind = value.decode() if isinstance(value, bytes) else value
        elif key == RETRY_AFTER_KEY:
            try:
                retry_after = float(value)
            except ValueError:
                retry_after = None
    message = details or code.name.lower()
    if kind is not None and kind in _KIND_CLASSES:
        return _KIND_CLASSES[kind](message)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and retry_after is None:
        size_error = _size_limit_error(message)
        if size_error is not None:
            return size_error
    cls = _CLASS_FOR_CODE.get(code, Internal)
    return cls(message, retry_after_s=retry_after)


def from_rpc_error(error: grpc.RpcError) -> HeadraceError:
    """Map a failed call (sync or aio) to the matching Headrace error."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else str(error)
    trailing = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    return error_from_status(code, details, trailing)


_Message = TypeVar("_Message", covariant=True)


class StreamingCall(Protocol[_Message]):
    """A server-streaming grpc.aio call, as rpc_stream uses it."""

    def __aiter__(self) -> AsyncIterator[_Message]: ...

    def cancel(self) -> bool: ...


async def rpc_stream(call: StreamingCall[_Message]) -> AsyncGenerator[_Message, None]:
    """A server-streaming call's messages, its failure as HeadraceError; the
    call is cancelled however its reader stops (an early close, a cancel),
    not whenever the garbage collector gets to it. Return it from a plain
    function, so the per-message path has one generator, not two."""
    try:
        async for message in call:
            yield message
    except grpc.aio.AioRpcError as exc:
        raise from_rpc_error(exc) from exc
    finally:
        call.cancel()
