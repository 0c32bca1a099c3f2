"""The router as a process reloads its registry without a restart: when
the config file changes (the watcher) and on SIGHUP; a bad file is refused
with a log line and the running config stays."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.cli import headrace

pytestmark = pytest.mark.slow


def config(default_version: str, *, watch: bool, **extra: Any) -> dict[str, Any]:
    return {
        "pools": {"smollm2": {"engine": {"kind": "synthetic", "ttft_ms": 1}}},
        "models": {
            "smollm2": {
                "default_version": default_version,
                "versions": {"1": {"pool": "smollm2"}, "2": {"pool": "smollm2"}},
            }
        },
        "routing": {"reload": {"watch": watch, "poll_interval_s": 0.2}},
        **extra,
    }


def resolves_to(env: dict[str, str], model_id: str) -> str:
    listing = headrace(env, "models", "list")
    assert listing.returncode == 0, listing.stderr
    for line in listing.stdout.splitlines():
        fields = line.split()
        # "  ID -> VERSION task pool ..." lines (the prepared-folders section has no arrow).
        if len(fields) > 2 and fields[0] == model_id and fields[1] == "->":
            return fields[2]
    raise AssertionError(listing.stdout)


def wait_for(predicate: Any, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.2)


def test_file_changes_and_sighup_reload_the_registry(cli_env: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "headrace.yaml"
    path.write_text(yaml.safe_dump(config("1", watch=True)))
    up = headrace({**cli_env, "HEADRACE_CONFIG": str(path)}, "up", "--detach")
    assert up.returncode == 0, up.stdout + up.stderr
    state_dir = Path(cli_env["HEADRACE_STATE_DIR"])
    router = next(p for p in json.loads((state_dir / "mesh.json").read_text())["processes"] if p["name"] == "router")
    # The CLI itself reads no config file here: a broken one must not stop it.
    env = cli_env
    assert resolves_to(env, "smollm2") == "smollm2@1"

    # The watcher sees the new file.
    path.write_text(yaml.safe_dump(config("2", watch=True)))
    wait_for(lambda: resolves_to(env, "smollm2") == "smollm2@2")
    answer = headrace(env, "generate", "hi", "--max-tokens", "2")
    assert answer.returncode == 0 and "smollm2@2" in answer.stderr

    # A broken file is refused; the router keeps serving what it had.
    path.write_text(yaml.safe_dump(config("7", watch=True)))
    os.kill(router["pid"], signal.SIGHUP)
    log = state_dir / "logs" / "router.log"
    wait_for(lambda: "rejected, keeping the running config" in log.read_text())
    assert "default_version '7' is not among versions" in log.read_text()
    assert resolves_to(env, "smollm2") == "smollm2@2"

    # SIGHUP with a good file applies it.
    path.write_text(yaml.safe_dump(config("1", watch=True, aliases={"chat": "smollm2"})))
    os.kill(router["pid"], signal.SIGHUP)
    wait_for(lambda: resolves_to(env, "chat") == "smollm2@1")
    reload = headrace(env, "models", "reload")
    assert reload.returncode == 0 and reload.stdout.startswith("unchanged"), reload.stdout + reload.stderr
    assert headrace(env, "down").returncode == 0
