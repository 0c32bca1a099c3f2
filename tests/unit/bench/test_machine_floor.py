"""bench/machine_floor.py: the machine's own cost of crossing between
processes, measured for real (a forked ping-pong, a gRPC server in its own
process), on small counts."""

from __future__ import annotations

import pytest

from bench.machine_floor import MachineFloor, measure


def test_the_floor_is_measured_between_two_real_processes() -> None:
    floor = measure(ping_pongs=500, grpc_calls=100, stream_messages=5)
    # Each crossing was made and timed (no timing compared: a loaded
    # machine stretches any of them).
    assert floor.wake_cpu_us > 0 and floor.pipe_round_trip_us > 0 and floor.grpc_call_p50_ms > 0
    assert floor.grpc_client_cpu_us > 0 and floor.stream_receiver_cpu_us > 0
    # The server is another process: its CPU is read from /proc, in clock
    # ticks, so it may round to zero on so few calls, never below.
    assert floor.grpc_server_cpu_us >= 0 and floor.stream_sender_cpu_us >= 0
    assert floor.two_calls_ms == pytest.approx(2 * floor.grpc_call_p50_ms)
    assert floor.as_dict()["stream_message_us"] == pytest.approx(
        floor.stream_sender_cpu_us + floor.stream_receiver_cpu_us
    )


def test_the_text_states_each_number() -> None:
    floor = MachineFloor(20.0, 55.0, 0.48, 215.0, 330.0, 68.0, 67.0)
    text = floor.text()
    for piece in (
        "20 us of CPU",
        "55 us",
        "0.48 ms p50",
        "215 us of client",
        "330 us of server",
        "0.96 ms",
        "67 us",
        "68 us",
    ):
        assert piece in text, piece
