"""Calls that only read, sent to any scheduler replica, are retried on
UNAVAILABLE onto another replica (channels.py): how a read in flight on a
replica that dies would otherwise reach the client as an error. Writes are
not retried: one that failed may have done its work."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import grpc.aio
import pytest

from headrace.runtime.channels import open_balanced_channel
from headrace.runtime.config import LimitSettings
from headrace.runtime.service_certs import Role
from headrace.v1 import batch_pb2, scheduler_pb2, scheduler_pb2_grpc


class Replica(scheduler_pb2_grpc.SchedulerServicer):
    """A scheduler replica that answers, or one going away (UNAVAILABLE)."""

    def __init__(self, *, going_away: bool) -> None:
        self.going_away = going_away
        self.calls: list[str] = []

    async def _answer(self, method: str, context: grpc.aio.ServicerContext) -> None:
        self.calls.append(method)
        if self.going_away:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "shutting down")

    async def ListWorkers(
        self, request: scheduler_pb2.ListWorkersRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.ListWorkersResponse:
        await self._answer("ListWorkers", context)
        return scheduler_pb2.ListWorkersResponse()

    async def SubmitBatch(
        self, request: batch_pb2.SubmitBatchRequest, context: grpc.aio.ServicerContext
    ) -> batch_pb2.BatchJob:
        await self._answer("SubmitBatch", context)
        return batch_pb2.BatchJob(id="batch_1")


@pytest.fixture
async def replicas() -> AsyncIterator[tuple[list[Replica], scheduler_pb2_grpc.SchedulerStub]]:
    servers, servicers, targets = [], [], []
    for going_away in (True, False):
        servicer = Replica(going_away=going_away)  # type: ignore[abstract]  # only the methods under test
        server = grpc.aio.server()
        scheduler_pb2_grpc.add_SchedulerServicer_to_server(servicer, server)
        targets.append(f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}")
        await server.start()
        servers.append(server)
        servicers.append(servicer)
    channel = open_balanced_channel(targets, LimitSettings(), None, server=Role.SCHEDULER)
    try:
        yield servicers, scheduler_pb2_grpc.SchedulerStub(channel)
    finally:
        await channel.close()
        for server in servers:
            await server.stop(0)


async def test_a_read_refused_by_a_replica_going_away_is_answered_by_another(
    replicas: tuple[list[Replica], scheduler_pb2_grpc.SchedulerStub],
) -> None:
    (going, staying), stub = replicas
    for _ in range(8):
        await stub.ListWorkers(scheduler_pb2.ListWorkersRequest(), timeout=5)
    assert going.calls, "round robin sent some reads to the replica going away"
    assert len(staying.calls) == 8  # every read answered there, the refused ones on their retry


async def test_a_write_is_not_retried(replicas: tuple[list[Replica], scheduler_pb2_grpc.SchedulerStub]) -> None:
    (going, staying), stub = replicas
    failed = 0
    for _ in range(8):
        try:
            await stub.SubmitBatch(batch_pb2.SubmitBatchRequest(), timeout=5)
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE
            failed += 1
    assert failed == len(going.calls) > 0
    assert failed + len(staying.calls) == 8
