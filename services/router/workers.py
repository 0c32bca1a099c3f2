"""What the router's attempts need of the scheduler and the workers, as one
small seam (`Workers`): place a request, hold its lease while it runs,
give back a lease that was not used, and stream one answer from a worker.
`MeshWorkers` is the real one, over gRPC; unit tests pass fakes.

Errors come out as HeadraceError (never grpc.aio.AioRpcError), so that
what uses the seam reasons about one error hierarchy."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import AbstractAsyncContextManager
from typing import Protocol

import grpc.aio

from headrace.runtime.channels import ChannelPool, call_options
from headrace.runtime.errors import from_rpc_error, no_such_method, rpc_stream
from headrace.v1 import generation_pb2, scheduler_pb2, worker_pb2, worker_pb2_grpc
from services.router.leasing import LeaseUse, Leasing


class Workers(Protocol):
    async def place(self, request: scheduler_pb2.PlaceRequest) -> scheduler_pb2.PlaceResponse:
        """A lease on a worker's slot (raises HeadraceError: none now, queue full, ...)."""
        ...

    def hold(self, lease: scheduler_pb2.Lease) -> AbstractAsyncContextManager[LeaseUse]:
        """Keep the lease while the block runs; give it back however it ends,
        with the outcome and usage the block wrote into the LeaseUse."""
        ...

    def release(self, lease: scheduler_pb2.Lease) -> None:
        """Give back, at once, a lease that will not be used."""
        ...

    def generate(
        self, lease: scheduler_pb2.Lease, request: worker_pb2.WorkerGenerateRequest
    ) -> AsyncGenerator[generation_pb2.GenerateStreamResponse, None]:
        """The answer's deltas from the leased worker. Closing the generator
        early cancels the call (the worker aborts the sequence)."""
        ...


class MeshWorkers:
    """The scheduler (through Leasing) and the workers' gRPC servers."""

    def __init__(self, leasing: Leasing, channels: ChannelPool) -> None:
        self._leasing = leasing
        self._channels = channels
        # Workers of an older version, without Worker.Complete: whole answers
        # come from their Generate (one message) instead.
        self._without_complete: set[str] = set()

    async def place(self, request: scheduler_pb2.PlaceRequest) -> scheduler_pb2.PlaceResponse:
        try:
            return await self._leasing.place(request)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from exc

    def hold(self, lease: scheduler_pb2.Lease) -> AbstractAsyncContextManager[LeaseUse]:
        return self._leasing.hold(lease)

    def release(self, lease: scheduler_pb2.Lease) -> None:
        self._leasing.give_back(lease)

    def generate(
        self, lease: scheduler_pb2.Lease, request: worker_pb2.WorkerGenerateRequest
    ) -> AsyncGenerator[generation_pb2.GenerateStreamResponse, None]:
        stub = worker_pb2_grpc.WorkerStub(self._channels.get(lease.endpoint))
        if request.whole_answer and lease.endpoint not in self._without_complete:
            # One message: a unary call costs less on both sides than a stream.
            return self._complete(stub, lease.endpoint, request)
        return rpc_stream(stub.Generate(request, **call_options()))

    async def _complete(
        self, stub: worker_pb2_grpc.WorkerStub, endpoint: str, request: worker_pb2.WorkerGenerateRequest
    ) -> AsyncGenerator[generation_pb2.GenerateStreamResponse, None]:
        try:
            answer: generation_pb2.GenerateStreamResponse = await stub.Complete(request, **call_options())
        except grpc.aio.AioRpcError as exc:
            if not no_such_method(exc):
                raise from_rpc_error(exc) from exc
            self._without_complete.add(endpoint)
            async for message in rpc_stream(stub.Generate(request, **call_options())):
                yield message
            return
        yield answer
