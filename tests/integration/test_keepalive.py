"""Servers accept the keepalive pings their clients send. Both ends come
from one KeepalivePolicy (headrace/runtime/channels.py); here at 1 s
instead of 10 s (1 s is the least a gRPC client waits between pings), so
a few seconds cover several intervals. A server at gRPC's defaults is the
control, side by side: its third ping strike (about 3 s in) closes the
connection with GOAWAY `too_many_pings`, and the channel leaves READY.
That is what the mesh's connections saw every 30-80 s at 10 s."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from headrace.runtime.channels import KeepalivePolicy, channel_options, server_options
from headrace.runtime.config import LimitSettings

FAST = KeepalivePolicy(ping_interval_ms=1_000, ping_timeout_ms=2_000)
SECONDS = 4.5
LIMITS = LimitSettings()

pytestmark = pytest.mark.slow


@asynccontextmanager
async def serving(options: list[tuple[str, Any]]) -> AsyncIterator[str]:
    server = grpc.aio.server(options=options)
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


async def states_over(address: str, seconds: float) -> tuple[set[grpc.ChannelConnectivity], bool]:
    """The channel states a client of FAST sees while its connection carries
    no data for `seconds` (a stream open and quiet, as a load-report stream
    between reports), and whether a call on it succeeds afterwards."""
    states: set[grpc.ChannelConnectivity] = set()
    async with grpc.aio.insecure_channel(address, options=channel_options(LIMITS, FAST)) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        watch = stub.Watch(health_pb2.HealthCheckRequest())
        await watch.read()
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            states.add(channel.get_state())
            await asyncio.sleep(0.02)
        stream_alive = not watch.done()
        watch.cancel()
        answered = (await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)).status == SERVING
    return states, stream_alive and answered


SERVING = health_pb2.HealthCheckResponse.SERVING


async def test_servers_accept_their_clients_pings_where_defaults_send_goaway() -> None:
    async with serving(server_options(LIMITS, FAST)) as ours, serving([]) as defaults:
        (states, alive), (control, _) = await asyncio.gather(states_over(ours, SECONDS), states_over(defaults, SECONDS))
    assert states == {grpc.ChannelConnectivity.READY}
    assert alive
    # The control saw the GOAWAY: this test can tell.
    assert control != {grpc.ChannelConnectivity.READY}
