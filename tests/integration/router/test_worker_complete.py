"""The router's whole answers come from Worker.Complete (one unary call);
a worker of an older version, without it, answers from its Generate and
is remembered as such. Real gRPC on loopback, workers faked as servicers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import grpc.aio
import pytest

from headrace.runtime.channels import ChannelPool
from headrace.runtime.config import LimitSettings
from headrace.runtime.errors import Unimplemented
from headrace.runtime.service_certs import Role
from headrace.v1 import generation_pb2, scheduler_pb2, worker_pb2, worker_pb2_grpc
from services.router.workers import MeshWorkers


def answer(text: str) -> generation_pb2.GenerateStreamResponse:
    return generation_pb2.GenerateStreamResponse(text=text, finish_reason=generation_pb2.FINISH_REASON_STOP)


class OlderWorker(worker_pb2_grpc.WorkerServicer):
    """Generate only (the generated base answers UNIMPLEMENTED for the rest)."""

    def __init__(self) -> None:
        self.generates = 0

    async def Generate(  # type: ignore[override]
        self, request: worker_pb2.WorkerGenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[generation_pb2.GenerateStreamResponse]:
        self.generates += 1
        yield answer(f"generate:{request.request_id}")


class NewerWorker(OlderWorker):
    async def Complete(  # type: ignore[override]
        self, request: worker_pb2.WorkerGenerateRequest, context: grpc.aio.ServicerContext
    ) -> generation_pb2.GenerateStreamResponse:
        if request.request_id == "refuse":
            # The method itself says UNIMPLEMENTED: an error, not an older worker.
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this engine cannot do that")
        return answer(f"complete:{request.request_id}")


async def serve(servicer: worker_pb2_grpc.WorkerServicer) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    worker_pb2_grpc.add_WorkerServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


def whole(request_id: str) -> worker_pb2.WorkerGenerateRequest:
    return worker_pb2.WorkerGenerateRequest(request_id=request_id, model_version="m@1", whole_answer=True)


async def texts(workers: MeshWorkers, endpoint: str, request: worker_pb2.WorkerGenerateRequest) -> list[str]:
    lease = scheduler_pb2.Lease(lease_id="l", worker_id="w", endpoint=endpoint)
    return [message.text async for message in workers.generate(lease, request)]


@pytest.fixture
async def channels() -> AsyncIterator[ChannelPool]:
    pool = ChannelPool(LimitSettings(), None, server=Role.WORKER)
    yield pool
    await pool.close()


async def test_whole_answers_from_complete_and_from_an_older_workers_generate(channels: ChannelPool) -> None:
    newer, older = NewerWorker(), OlderWorker()  # type: ignore[abstract]
    (newer_server, newer_at), (older_server, older_at) = await serve(newer), await serve(older)
    workers = MeshWorkers(None, channels)  # type: ignore[arg-type]
    try:
        assert await texts(workers, newer_at, whole("a")) == ["complete:a"]
        assert newer.generates == 0
        # A stream is still a stream.
        streamed = worker_pb2.WorkerGenerateRequest(request_id="s", model_version="m@1")
        assert await texts(workers, newer_at, streamed) == ["generate:s"]
        # The older worker: its Generate, this time and from now on (no Complete tried).
        assert await texts(workers, older_at, whole("b")) == ["generate:b"]
        assert await texts(workers, older_at, whole("c")) == ["generate:c"]
        assert older.generates == 2
        # UNIMPLEMENTED from the method itself is the request's error.
        with pytest.raises(Unimplemented, match="cannot do that"):
            await texts(workers, newer_at, whole("refuse"))
        assert await texts(workers, newer_at, whole("d")) == ["complete:d"]
    finally:
        await newer_server.stop(0)
        await older_server.stop(0)
