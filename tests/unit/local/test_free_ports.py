"""free_port_run: runs of ports free now, outside the ephemeral range that
client connections take their local ports from."""

from __future__ import annotations

import socket

from headrace.local.redis_server import _ephemeral_low, free_port_run


def test_a_run_of_free_ports_below_the_ephemeral_range() -> None:
    low = _ephemeral_low()
    for _ in range(20):
        base = free_port_run(9)
        assert base + 9 <= low
        for port in range(base, base + 9):
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", port))
