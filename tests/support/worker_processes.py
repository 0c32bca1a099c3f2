"""Workers as real processes (`python -m services.worker`), for tests that
need them to crash, stop and report on their own."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from headrace.local.redis_server import free_port


@dataclass
class WorkerProcess:
    worker_id: str
    address: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def kill(self) -> None:
        """SIGKILL: the worker vanishes without a word (a crash)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def spawn_worker(config_path: Path, *, pool: str, index: int, log_dir: Path) -> WorkerProcess:
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"worker-{pool}-{index}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.worker", "--pool", pool, "--index", str(index), "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "HEADRACE_CONFIG": str(config_path)},
            # Its own process group: killing it kills what it spawned too.
            start_new_session=True,
        )
    return WorkerProcess(f"{pool}-{index}", f"127.0.0.1:{port}", process, log_path)
