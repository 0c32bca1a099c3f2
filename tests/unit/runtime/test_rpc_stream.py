"""rpc_stream: a server-streaming call read as HeadraceErrors, cancelled
however its reader stops."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import grpc.aio
import pytest

from headrace.runtime.errors import Unavailable, rpc_stream


class FakeCall:
    def __init__(self, messages: list[str], *, fails: bool = False) -> None:
        self._messages = messages
        self._fails = fails
        self.cancelled = False

    async def _iterate(self) -> AsyncIterator[str]:
        for message in self._messages:
            yield message
        if self._fails:
            raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "gone")

    def __aiter__(self) -> AsyncIterator[str]:
        return self._iterate()

    def cancel(self) -> bool:
        self.cancelled = True
        return True


async def test_an_early_close_cancels_the_call() -> None:
    call = FakeCall(["a", "b", "c"])
    stream = rpc_stream(call)
    assert await anext(stream) == "a"
    await stream.aclose()
    assert call.cancelled


async def test_a_failed_call_reads_as_a_headrace_error_after_its_messages() -> None:
    call = FakeCall(["a"], fails=True)
    seen = []
    with pytest.raises(Unavailable, match="gone"):
        async for message in rpc_stream(call):
            seen.append(message)
    assert seen == ["a"] and call.cancelled
