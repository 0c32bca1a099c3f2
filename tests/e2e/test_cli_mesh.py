"""The CLI drives the whole mesh as processes: up --detach, generate,
status, down, and nothing is left running."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from headrace.local_redis import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture
def cli_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    ports = {name: free_port() for name in ("ROUTER__PORT", "CACHE__PORT", "SCHEDULER__PORT", "REDIS")}
    env = {
        **os.environ,
        "HEADRACE_STATE_DIR": str(tmp_path / "state"),
        "HEADRACE_REDIS_URL": f"redis://127.0.0.1:{ports.pop('REDIS')}/0",
        "HEADRACE_WORKER__BASE_PORT": str(free_port()),
        "HEADRACE_ROUTER__METRICS_PORT": str(free_port()),
        "HEADRACE_CACHE__METRICS_PORT": str(free_port()),
        "HEADRACE_SCHEDULER__METRICS_PORT": str(free_port()),
        "HEADRACE_WORKER__METRICS_PORT_OFFSET": "null",
        **{f"HEADRACE_{name}": str(port) for name, port in ports.items()},
    }
    yield env
    subprocess.run([sys.executable, "-m", "headrace.cli", "down"], env=env, capture_output=True, timeout=120)


def headrace(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "headrace.cli", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def live_processes_in_groups(pgids: set[int]) -> list[int]:
    live = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) in pgids and fields[0] != "Z":
            live.append(int(stat.parent.name))
    return live


def test_up_generate_status_down_leaves_nothing_behind(cli_env: dict[str, str]) -> None:
    up = headrace(cli_env, "up", "--detach", "--engine", "synthetic")
    assert up.returncode == 0, up.stdout + up.stderr
    assert "redis" in up.stdout and "(started: nothing answered there)" in up.stdout
    assert "mesh SERVING" in up.stdout

    state = json.loads((Path(cli_env["HEADRACE_STATE_DIR"]) / "mesh.json").read_text())
    pgids = {p["pid"] for p in state["processes"]}
    assert {p["name"] for p in state["processes"]} == {
        "redis",
        "cache",
        "scheduler",
        "worker-smollm2-0",
        "batch-smollm2-0",
        "router",
    }

    status = headrace(cli_env, "status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert status.stdout.count("SERVING") == 6

    answer = headrace(cli_env, "generate", "Say hello", "--max-tokens", "7")
    assert answer.returncode == 0, answer.stderr
    assert len(answer.stdout.split()) == 7
    assert "smollm2@1" in answer.stderr

    streamed = headrace(cli_env, "generate", "Say hello", "--stream", "--max-tokens", "5")
    assert streamed.returncode == 0, streamed.stderr
    assert len(streamed.stdout.split()) == 5 and "ttft" in streamed.stderr

    bad = headrace(cli_env, "generate", "x", "--model", "nope")
    assert bad.returncode != 0 and "NotFound: unknown model 'nope'" in bad.stderr

    twice = headrace(cli_env, "up", "--detach")
    assert twice.returncode != 0 and "already running" in twice.stderr

    down = headrace(cli_env, "down")
    assert down.returncode == 0 and "stopped 6 processes" in down.stdout
    assert live_processes_in_groups(pgids) == []
    after = headrace(cli_env, "status")
    assert after.returncode == 1 and "DOWN" in after.stdout


def test_up_reports_a_service_that_fails_to_start(cli_env: dict[str, str]) -> None:
    # Another program holds the router's port: up must say so, and clean up.
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", int(cli_env["HEADRACE_ROUTER__PORT"])))
        squatter.listen()
        up = headrace(cli_env, "up", "--detach", "--engine", "synthetic", "--timeout", "60")
    assert up.returncode != 0
    assert "router exited while starting" in up.stderr
    assert "could not bind" in up.stderr
    assert not (Path(cli_env["HEADRACE_STATE_DIR"]) / "mesh.json").exists()
