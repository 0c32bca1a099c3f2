"""`headrace up` waiting for workers to register: a scheduler that does not
answer ends in a clear MeshError, never a raw gRPC traceback."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from headrace.local.mesh import LocalMesh, MeshError, ServiceProcess
from headrace.runtime.config import Settings


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _plan(tmp_path: Path, scheduler_pid: int) -> list[ServiceProcess]:
    log = tmp_path / "scheduler.log"
    log.write_text("boom: the scheduler's last words\n")
    address = f"127.0.0.1:{_closed_port()}"
    return [
        ServiceProcess(
            "scheduler", "services.scheduler", [], address, "headrace.v1.Scheduler", str(log), scheduler_pid
        ),
        ServiceProcess("worker-a-0", "services.worker", [], "127.0.0.1:1", "headrace.v1.Worker", str(log)),
    ]


def test_a_scheduler_that_exited_is_reported_with_its_log(tmp_path: Path) -> None:
    mesh = LocalMesh(Settings(state_dir=tmp_path))
    with pytest.raises(MeshError, match="scheduler exited") as caught:
        mesh._wait_workers_registered(_plan(tmp_path, scheduler_pid=0), time.monotonic() + 30)
    assert "last words" in str(caught.value)


def test_a_scheduler_that_does_not_answer_yet_is_asked_again_until_the_deadline(tmp_path: Path) -> None:
    mesh = LocalMesh(Settings(state_dir=tmp_path))
    with pytest.raises(MeshError, match="did not register"):
        mesh._wait_workers_registered(_plan(tmp_path, scheduler_pid=os.getpid()), time.monotonic() + 0.5)
