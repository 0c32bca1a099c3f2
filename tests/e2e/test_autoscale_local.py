"""`headrace up` follows the autoscaler: under a queue it starts a second
worker process (and its batch consumer), and when the load is gone it
retires it again; no request is lost on the way."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from headrace.client import AsyncHeadraceClient
from tests.support.cli import headrace

pytestmark = pytest.mark.slow


def config() -> dict[str, Any]:
    return {
        # Two slots at 40 tokens/s: 20 concurrent requests queue.
        "pools": {
            "gen": {
                "workers": 1,
                "engine": {"kind": "synthetic", "ttft_ms": 5, "tokens_per_s": 40, "max_concurrency": 2},
            }
        },
        "models": {"gen": {"default_version": "1", "versions": {"1": {"pool": "gen"}}}},
        "default_model": "gen",
        "cache": {"enabled": False},
        "scheduler": {
            "pools": {
                "gen": {
                    "autoscale": {
                        "enabled": True,
                        "min_workers": 1,
                        "max_workers": 2,
                        "scale_up_cooldown_s": 0,
                        "queue_wait_slo_s": 0.2,
                        "scale_down_cooldown_s": 2,
                        "scale_down_window_s": 3,
                        "cold_start_s": 30,
                    }
                }
            }
        },
    }


def processes(state_dir: Path) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in json.loads((state_dir / "mesh.json").read_text())["processes"]}


def wait_for(what: str, predicate: Any, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


async def load(target: str, count: int) -> list[str]:
    async with AsyncHeadraceClient(target) as client:

        async def one(i: int) -> str:
            answer = await client.generate(f"request {i}", max_tokens=20, temperature=0.0)
            return str(answer.text)

        return await asyncio.gather(*(one(i) for i in range(count)))


def test_up_starts_and_retires_workers_as_the_autoscaler_decides(cli_env: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "headrace.yaml"
    path.write_text(yaml.safe_dump(config()))
    env = {**cli_env, "HEADRACE_CONFIG": str(path)}
    up = headrace(env, "up", "--detach")
    assert up.returncode == 0, up.stdout + up.stderr
    state_dir = Path(env["HEADRACE_STATE_DIR"])
    assert "worker-gen-1" not in processes(state_dir)
    target = f"127.0.0.1:{env['HEADRACE_ROUTER__PORT']}"

    # 40 requests of ~0.5 s each on 2 slots: a queue that breaks the SLO.
    answers = asyncio.run(load(target, 40))
    assert len(answers) == 40 and all(answers), "a request was lost while the pool scaled"
    wait_for("a second worker", lambda: "worker-gen-1" in processes(state_dir))
    assert "batch-gen-1" in processes(state_dir)
    status = headrace(env, "status")
    assert "pool gen" in status.stdout and "desired 2" in status.stdout, status.stdout

    # Idle: after the window and the cooldown, back to one, and the retired
    # worker's processes are gone from the state.
    wait_for("the scale-down", lambda: "worker-gen-1" not in processes(state_dir))
    assert "batch-gen-1" not in processes(state_dir)
    after = headrace(env, "generate", "still there?", "--max-tokens", "3")
    assert after.returncode == 0, after.stderr
    log = (state_dir / "logs" / "supervisor.log").read_text()
    assert "pool gen: started worker 1" in log and "pool gen: retiring worker-gen-1" in log
