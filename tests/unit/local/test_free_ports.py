"""free_port_run: runs of ports free now, outside the ephemeral range that
client connections take their local ports from."""

from __future__ import annotations

import socket

from headrace.local.redis_server import _ephemeral_low, free_port, free_port_run


def test_a_run_of_free_ports_below_the_ephemeral_range() -> None:
    low = _ephemeral_low()
    for _ in range(20):
        base = free_port_run(9)
        assert base + 9 <= low
        for port in range(base, base + 9):
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", port))


def test_ports_handed_out_one_after_the_other_never_repeat() -> None:
    """Two servers of one mesh get two ports picked in a row: a repeat made
    the router's gateway fail to bind the cache's port ("could not bind")."""
    picked = [free_port() for _ in range(300)]
    runs = [free_port_run(4) for _ in range(30)]
    every = picked + [base + n for base in runs for n in range(4)]
    assert len(set(every)) == len(every)
