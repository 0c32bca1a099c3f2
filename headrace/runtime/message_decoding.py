"""Request bytes that do not decode, answered as the caller's mistake.

grpc.aio decodes a request before any interceptor code runs; a decode
error there becomes `UNKNOWN "Unexpected <class DecodeError>"` and a logged
traceback per call, so garbage sent in a loop fills the log. Instead, the
interceptor (interceptors.py) gives every handler a `tolerant` deserializer:
bytes that do not decode become an `Undecodable` marker, and `decoded`
turns the marker into InvalidArgument inside the handler's own error path
(a status with a message, no traceback).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from headrace.runtime.errors import InvalidArgument

Deserializer = Callable[[bytes], Any]


class Undecodable:
    """What arrived in place of a request message that failed to decode."""

    __slots__ = ("reason", "size")

    def __init__(self, reason: str, size: int) -> None:
        self.reason = reason
        self.size = size


def _message_name(deserialize: Deserializer) -> str:
    # Generated handlers pass `SomeMessage.FromString`: its class names the type.
    owner = getattr(deserialize, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    return str(getattr(descriptor, "full_name", "request message"))


def tolerant(deserialize: Deserializer | None) -> Deserializer | None:
    """`deserialize`, returning an Undecodable instead of raising."""
    if deserialize is None:
        return None
    name = _message_name(deserialize)

    def decode(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as exc:
            # DecodeError, and whatever else a decoder raises on bad bytes
            # (RecursionError on absurd nesting, UnicodeDecodeError).
            return Undecodable(f"not a valid {name} ({len(data)} bytes: {type(exc).__name__})", len(data))

    return decode


def decoded(request: Any) -> Any:
    """`request`, or InvalidArgument if it did not decode."""
    if isinstance(request, Undecodable):
        raise InvalidArgument(f"request message: {request.reason}")
    return request


async def decoded_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """A client stream whose first undecodable message raises InvalidArgument."""
    async for request in requests:
        yield decoded(request)
