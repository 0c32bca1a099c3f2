"""The CLI drives the whole mesh as processes: up --detach, generate,
status, down, and nothing is left running."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from tests.support.cli import headrace, live_processes_in_groups

pytestmark = pytest.mark.slow


def test_up_generate_status_down_leaves_nothing_behind(cli_env: dict[str, str]) -> None:
    # The quick start for development: every pool on the synthetic engine.
    # (The real default is tested in test_real_model_mesh.py.) This test is
    # about the CLI and its processes, so the cache stays exact-only.
    cli_env = {**cli_env, "HEADRACE_CACHE__SEMANTIC__ENABLED": "false"}
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
        "worker-minilm-0",
        "batch-smollm2-0",
        "batch-minilm-0",
        "router",
    }

    status = headrace(cli_env, "status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert status.stdout.count("SERVING") == 8

    answer = headrace(cli_env, "generate", "Say hello", "--max-tokens", "7")
    assert answer.returncode == 0, answer.stderr
    assert len(answer.stdout.split()) == 7
    assert "smollm2@1" in answer.stderr

    streamed = headrace(cli_env, "generate", "Say hello", "--stream", "--max-tokens", "5")
    assert streamed.returncode == 0, streamed.stderr
    assert len(streamed.stdout.split()) == 5 and "ttft" in streamed.stderr

    embedded = headrace(cli_env, "embed", "one text", "another")
    assert embedded.returncode == 0, embedded.stderr
    vectors = json.loads(embedded.stdout)
    assert len(vectors) == 2 and len(vectors[0]) == 384

    bad = headrace(cli_env, "generate", "x", "--model", "nope")
    assert bad.returncode != 0 and "NotFound: unknown model 'nope'" in bad.stderr

    twice = headrace(cli_env, "up", "--detach")
    assert twice.returncode != 0 and "already running" in twice.stderr

    down = headrace(cli_env, "down")
    assert down.returncode == 0 and "stopped 8 processes" in down.stdout
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
