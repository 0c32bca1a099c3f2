"""What this machine charges for crossing between processes, before any of
Headrace's own work: the floor under bench-peers' added latency and under
the mesh's CPU per request and per streamed token.

- A wake: one process writes a byte to a pipe, another blocked reading it
  runs. Every gRPC message between two services costs several (the
  sender's loop, grpc's completion-queue thread, the receiver's loop).
  Timed as a ping-pong between two processes; CPU per one-way wake.
- A bare grpc.aio unary call between two processes (the health check,
  uvloop on both sides, no interceptors): wall time p50 at one call at a
  time, and the CPU each side spends per call.
- A bare grpc.aio server stream between two processes, paced as a CPU
  engine streams: 8 streams at once, each one small message every 10 ms
  (one token per sequence per engine step). CPU per message, each side:
  the floor under what the mesh spends per streamed token in the worker
  (the sending side) and in the router (the receiving side).

A request through the mesh makes at least two such calls one after the
other before its first token (the cache lookup, with the placement
beside it; then the worker), so twice the bare call's p50 is below any
latency the mesh can add on this machine.

    python -m bench.machine_floor
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.harness import process_cpu_s
from headrace.runtime.aio import run as run_loop

PING_PONGS = 20_000
GRPC_CALLS = 2_000
STREAMS = 8
STREAM_MESSAGES = 300
STREAM_STEP_S = 0.01


@dataclass(frozen=True)
class MachineFloor:
    # CPU of one process woken by another (its share of a ping-pong), and
    # the wall time of the round trip.
    wake_cpu_us: float
    pipe_round_trip_us: float
    # A bare grpc.aio unary call between two processes, one at a time.
    grpc_call_p50_ms: float
    grpc_client_cpu_us: float
    grpc_server_cpu_us: float
    # A message of a bare server stream, paced (8 streams, one each 10 ms).
    stream_receiver_cpu_us: float
    stream_sender_cpu_us: float

    @property
    def two_calls_ms(self) -> float:
        """The least the mesh can add before a first token: two calls in turn."""
        return 2 * self.grpc_call_p50_ms

    @property
    def stream_message_us(self) -> float:
        """CPU of one streamed message, both sides."""
        return self.stream_sender_cpu_us + self.stream_receiver_cpu_us

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "two_calls_ms": self.two_calls_ms, "stream_message_us": self.stream_message_us}

    def text(self) -> str:
        return (
            f"This machine's floor (bench/machine_floor.py): a wake of one process by another costs "
            f"{self.wake_cpu_us:.0f} us of CPU (a pipe round trip {self.pipe_round_trip_us:.0f} us); "
            f"a bare grpc.aio unary call between two processes takes {self.grpc_call_p50_ms:.2f} ms p50 at one "
            f"at a time, {self.grpc_client_cpu_us:.0f} us of client and {self.grpc_server_cpu_us:.0f} us of "
            f"server CPU. Two such calls in turn, as every request makes before its first token: "
            f"{self.two_calls_ms:.2f} ms. A message of a bare gRPC server stream paced as an engine's tokens "
            f"({STREAMS} streams, one message each per {STREAM_STEP_S * 1e3:.0f} ms): "
            f"{self.stream_sender_cpu_us:.0f} us of the sender's CPU and {self.stream_receiver_cpu_us:.0f} us "
            "of the receiver's."
        )


def _ping_pong(rounds: int) -> tuple[float, float]:
    """(CPU us per one-way wake, wall us per round trip)."""
    to_child, from_parent = os.pipe()
    from_child, to_parent = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the forked side
        try:
            for _ in range(rounds):
                os.read(to_child, 1)
                os.write(to_parent, b"x")
        finally:
            os._exit(0)
    try:
        started, cpu_started = time.perf_counter(), time.process_time()
        for _ in range(rounds):
            os.write(from_parent, b"x")
            os.read(from_child, 1)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    finally:
        os.waitpid(child, 0)
        for fd in (to_child, from_parent, from_child, to_parent):
            os.close(fd)
    return cpu / rounds * 1e6, wall / rounds * 1e6


def _same(message: bytes) -> bytes:
    return message


async def _paced(request: bytes, context: object) -> AsyncIterator[bytes]:
    """`request` says how many messages; one every STREAM_STEP_S."""
    for index in range(int(request)):
        await asyncio.sleep(STREAM_STEP_S)
        yield b"token %d" % index


async def _serve_health(port_file: str) -> None:
    import grpc
    import grpc.aio
    from grpc_health.v1 import health_pb2_grpc
    from grpc_health.v1.health import aio as health_aio

    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health_aio.HealthServicer(), server)
    paced = grpc.unary_stream_rpc_method_handler(_paced, request_deserializer=_same, response_serializer=_same)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("floor.Floor", {"Paced": paced}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    # Written once, before serving: nothing else waits on this loop yet.
    Path(port_file).write_text(str(port))  # noqa: ASYNC240
    await server.wait_for_termination()


async def _call_health(port: int, calls: int) -> tuple[list[float], float]:
    """(wall seconds of each call, client CPU seconds of all)."""
    import grpc.aio
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for _ in range(200):  # warm: the connection, the code paths
            await stub.Check(health_pb2.HealthCheckRequest())
        walls = []
        cpu_started = time.process_time()
        for _ in range(calls):
            started = time.perf_counter()
            await stub.Check(health_pb2.HealthCheckRequest())
            walls.append(time.perf_counter() - started)
        return walls, time.process_time() - cpu_started


async def _stream_paced(port: int, streams: int, messages: int) -> tuple[int, float]:
    """(messages received, client CPU seconds)."""
    import grpc.aio

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        paced = channel.unary_stream("/floor.Floor/Paced", request_serializer=_same, response_deserializer=_same)

        async def one(count: int) -> int:
            return sum([1 async for _ in paced(str(count).encode())])

        await one(5)  # warm: the connection, the code paths
        cpu_started = time.process_time()
        received = await asyncio.gather(*(one(messages) for _ in range(streams)))
        return sum(received), time.process_time() - cpu_started


def _grpc_call(calls: int, streams: int, messages: int) -> tuple[float, float, float, float, float]:
    """(unary p50 ms, its client and server CPU us per call; a streamed
    message's receiver and sender CPU us)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="headrace-floor-") as tmp:
        port_file = os.path.join(tmp, "port")
        server = subprocess.Popen([sys.executable, "-m", "bench.machine_floor", "--serve", port_file])
        try:
            deadline = time.monotonic() + 30
            # Written whole by the server once it listens (one short write).
            while not os.path.exists(port_file) or not Path(port_file).read_text():
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the health server did not start")
                time.sleep(0.05)
            port = int(Path(port_file).read_text())
            before = process_cpu_s(server.pid)
            walls, client_cpu = run_loop(_call_health(port, calls))
            server_cpu = process_cpu_s(server.pid) - before
            before = process_cpu_s(server.pid)
            received, receiver_cpu = run_loop(_stream_paced(port, streams, messages))
            sender_cpu = process_cpu_s(server.pid) - before
        finally:
            server.kill()
            server.wait()
    return (
        statistics.median(walls) * 1e3,
        client_cpu / calls * 1e6,
        server_cpu / calls * 1e6,
        receiver_cpu / received * 1e6,
        sender_cpu / received * 1e6,
    )


def measure(
    ping_pongs: int = PING_PONGS, grpc_calls: int = GRPC_CALLS, stream_messages: int = STREAM_MESSAGES
) -> MachineFloor:
    wake_cpu, round_trip = _ping_pong(ping_pongs)
    return MachineFloor(wake_cpu, round_trip, *_grpc_call(grpc_calls, STREAMS, stream_messages))


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        run_loop(_serve_health(sys.argv[2]))
        return
    floor = measure()
    print(json.dumps(floor.as_dict(), indent=2))
    print(floor.text())


if __name__ == "__main__":
    main()
