"""Driving the `headrace` CLI as a user would, on private ports and state."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from headrace.local.redis_server import free_port, free_port_run


def mesh_env(state_dir: Path) -> dict[str, str]:
    """Environment for a mesh on free ports, with its own Redis URL (nothing
    answers there, so `up` starts one) and state directory."""
    ports = {name: free_port() for name in ("ROUTER__PORT", "CACHE__PORT", "SCHEDULER__PORT", "REDIS")}
    return {
        **os.environ,
        "HEADRACE_STATE_DIR": str(state_dir),
        "HEADRACE_REDIS_URL": f"redis://127.0.0.1:{ports.pop('REDIS')}/0",
        # Worker n listens on base_port + n: the whole run must be free.
        "HEADRACE_WORKER__BASE_PORT": str(free_port_run(8)),
        "HEADRACE_ROUTER__HTTP_PORT": str(free_port()),
        "HEADRACE_ROUTER__METRICS_PORT": str(free_port()),
        "HEADRACE_CACHE__METRICS_PORT": str(free_port()),
        "HEADRACE_SCHEDULER__METRICS_PORT": str(free_port()),
        "HEADRACE_WORKER__METRICS_PORT_OFFSET": "null",
        **{f"HEADRACE_{name}": str(port) for name, port in ports.items()},
    }


def headrace(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "headrace.cli", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def live_processes_in_groups(pgids: set[int]) -> list[int]:
    """Live (non-zombie) processes in any of the process groups."""
    live = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) in pgids and fields[0] != "Z":
            live.append(int(stat.parent.name))
    return live
