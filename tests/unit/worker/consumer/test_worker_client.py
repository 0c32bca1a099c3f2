"""How the consumer reads a failed call to its worker."""

from __future__ import annotations

import grpc
import grpc.aio
import pytest

from headrace.local.redis_server import free_port
from headrace.runtime.config import LimitSettings
from services.worker.consumer.attempt_errors import AttemptError, WorkerUnavailable
from services.worker.consumer.worker_client import WorkerClient


def failed(code: grpc.StatusCode, details: str = "why") -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


@pytest.fixture
async def client() -> WorkerClient:
    # Nothing listens there: the worker "does not answer".
    return WorkerClient(
        f"127.0.0.1:{free_port()}", LimitSettings(), worker_id="w-0", price_per_hour=0.0, load_timeout_s=0.2
    )


@pytest.mark.parametrize(
    "code", [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION]
)
async def test_the_rows_own_faults_are_final(client: WorkerClient, code: grpc.StatusCode) -> None:
    error = await client._failure(failed(code, "max_tokens: too many"))
    assert isinstance(error, AttemptError) and not error.retryable
    assert (error.code, error.message) == (code.name.lower(), "max_tokens: too many")
    await client.close()


@pytest.mark.parametrize(
    "code", [grpc.StatusCode.INTERNAL, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED]
)
async def test_passing_failures_are_retried(client: WorkerClient, code: grpc.StatusCode) -> None:
    error = await client._failure(failed(code))
    assert isinstance(error, AttemptError) and error.retryable
    await client.close()


async def test_unavailable_from_a_worker_that_does_not_answer_is_not_the_rows_fault(client: WorkerClient) -> None:
    assert isinstance(await client._failure(failed(grpc.StatusCode.UNAVAILABLE)), WorkerUnavailable)
    await client.close()
