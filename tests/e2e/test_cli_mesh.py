"""The CLI drives the whole mesh as processes: up --detach, generate,
status, down, and nothing is left running."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import stat
import time
from pathlib import Path

import grpc
import pytest
import redis

from headrace.v1 import scheduler_pb2, scheduler_pb2_grpc
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

    # Supervised: a worker and a batch consumer killed with -9 come back.
    supervised_comeback(cli_env, ["worker-smollm2-0", "batch-smollm2-0"])
    again = headrace(cli_env, "generate", "Say hello", "--max-tokens", "3")
    assert again.returncode == 0, again.stderr
    state = json.loads((Path(cli_env["HEADRACE_STATE_DIR"]) / "mesh.json").read_text())
    pgids |= {p["pid"] for p in state["processes"]}

    bad = headrace(cli_env, "generate", "x", "--model", "nope")
    assert bad.returncode != 0 and "NotFound: unknown model 'nope'" in bad.stderr

    twice = headrace(cli_env, "up", "--detach")
    assert twice.returncode != 0 and "already running" in twice.stderr

    down = headrace(cli_env, "down")
    assert down.returncode == 0 and "stopped 8 processes" in down.stdout
    assert live_processes_in_groups(pgids) == []
    after = headrace(cli_env, "status")
    assert after.returncode == 1 and "DOWN" in after.stdout


def supervised_comeback(cli_env: dict[str, str], names: list[str], timeout_s: float = 120) -> None:
    state_path = Path(cli_env["HEADRACE_STATE_DIR"]) / "mesh.json"
    pids = {p["name"]: p["pid"] for p in json.loads(state_path.read_text())["processes"]}
    for name in names:
        os.kill(pids[name], signal.SIGKILL)
    killed_at = time.monotonic()
    while True:
        status = headrace(cli_env, "status")
        rows = {line.split()[0]: line for line in status.stdout.splitlines() if line.strip()}
        back = all(
            "SERVING" in rows[name] and "restarts 1, last exit: killed by SIGKILL" in rows[name] for name in names
        )
        if status.returncode == 0 and back:
            break
        assert time.monotonic() - killed_at < timeout_s, status.stdout
        time.sleep(0.5)
    # Reported, not asserted: how long the mesh had a hole.
    print(f"\nkilled {names}; SERVING again {time.monotonic() - killed_at:.1f}s later")
    restarted = {p["name"]: p["pid"] for p in json.loads(state_path.read_text())["processes"]}
    assert all(restarted[name] != pids[name] for name in names)


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


def test_up_with_api_keys_secures_every_internal_hop_by_itself(cli_env: dict[str, str]) -> None:
    # Keys configured, nothing else: `up` must make the certificates and the
    # Redis password itself (docs/security.md), and the mesh still serves.
    tenants = {"acme": {"api_key_sha256": [hashlib.sha256(b"acme-key").hexdigest()]}}
    cli_env = {**cli_env, "HEADRACE_CACHE__SEMANTIC__ENABLED": "false", "HEADRACE_TENANTS": json.dumps(tenants)}
    up = headrace(cli_env, "up", "--detach", "--engine", "synthetic")
    assert up.returncode == 0, up.stdout + up.stderr
    state_dir = Path(cli_env["HEADRACE_STATE_DIR"])
    password = (state_dir / "secrets" / "redis-password").read_text().strip()
    assert password not in up.stdout and ":***@" in up.stdout
    for secret in [state_dir / "secrets" / "redis-password", *(state_dir / "certs").glob("*.key")]:
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600, secret

    status = headrace(cli_env, "status")
    assert status.returncode == 0 and status.stdout.count("SERVING") == 8, status.stdout + status.stderr
    # Pool status comes from the scheduler, asked with the operator's certificate.
    assert "pool smollm2" in status.stdout, status.stdout
    answer = headrace({**cli_env, "HEADRACE_API_KEY": "acme-key"}, "generate", "Say hello", "--max-tokens", "4")
    assert answer.returncode == 0 and len(answer.stdout.split()) == 4, answer.stderr

    # Behind the router's door: no plaintext caller, and Redis wants its password.
    scheduler = f"127.0.0.1:{cli_env['HEADRACE_SCHEDULER__PORT']}"
    with grpc.insecure_channel(scheduler) as channel, pytest.raises(grpc.RpcError) as caught:
        scheduler_pb2_grpc.SchedulerStub(channel).ListWorkers(scheduler_pb2.ListWorkersRequest(), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    with redis.Redis.from_url(cli_env["HEADRACE_REDIS_URL"]) as client, pytest.raises(redis.AuthenticationError):
        client.ping()

    # A restarted worker and consumer get the same secrets (they start, register, serve).
    supervised_comeback(cli_env, ["worker-smollm2-0", "batch-smollm2-0"])
    again = headrace({**cli_env, "HEADRACE_API_KEY": "acme-key"}, "generate", "Say hello", "--max-tokens", "3")
    assert again.returncode == 0 and len(again.stdout.split()) == 3, again.stderr

    down = headrace(cli_env, "down")
    assert down.returncode == 0 and "stopped 8 processes" in down.stdout
