"""The supervisor restarts what dies, with a backoff, and records how each
run ended: real child processes, a clock the test moves."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from headrace.local.mesh import LocalMesh, ServiceProcess
from headrace.local.supervisor import BACKOFF_MAX_S, BACKOFF_S, STABLE_AFTER_S, Supervisor, describe_exit
from headrace.runtime.config import Settings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def wait_reaped(supervisor: Supervisor, process: ServiceProcess) -> None:
    """Until the supervisor has seen the kill (the kernel takes a moment)."""
    for _ in range(200):
        supervisor.watch_once()
        if process.last_exit:
            return
        time.sleep(0.01)
    raise AssertionError(f"{process.name}'s end was not seen")


@pytest.fixture
def sleeper(tmp_path: Path) -> tuple[LocalMesh, ServiceProcess]:
    mesh = LocalMesh(Settings(state_dir=tmp_path), echo=lambda line: None)
    process = ServiceProcess("sleeper", "", ["sleep", "60"], "-", "", str(tmp_path / "sleeper.log"))
    mesh.respawn(process, dict(os.environ))
    return mesh, process


def test_a_killed_process_is_started_again_after_a_backoff(sleeper: tuple[LocalMesh, ServiceProcess]) -> None:
    mesh, process = sleeper
    clock = Clock()
    supervisor = Supervisor(mesh, [process], dict(os.environ), clock=clock)
    first_pid = process.pid
    try:
        supervisor.watch_once()
        assert process.restarts == 0 and process.last_exit == ""
        os.kill(first_pid, signal.SIGKILL)
        wait_reaped(supervisor, process)
        assert process.last_exit == "killed by SIGKILL"
        # Not before the backoff is over.
        clock.now += BACKOFF_S / 2
        supervisor.watch_once()
        assert process.pid == first_pid and process.restarts == 0
        clock.now += BACKOFF_S
        supervisor.watch_once()
        assert process.restarts == 1 and process.pid != first_pid
        os.kill(process.pid, 0)  # the new one runs
        # The state file says so (what `headrace status` reads).
        saved = json.loads(mesh.state_path.read_text())["processes"][0]
        assert (saved["restarts"], saved["last_exit"], saved["pid"]) == (1, "killed by SIGKILL", process.pid)
    finally:
        mesh.stop_all([process])


def test_the_backoff_doubles_while_it_keeps_dying_and_resets_after_a_stable_run(
    sleeper: tuple[LocalMesh, ServiceProcess],
) -> None:
    mesh, process = sleeper
    clock = Clock()
    supervisor = Supervisor(mesh, [process], dict(os.environ), clock=clock)
    waits = []
    try:
        for _ in range(7):
            os.kill(process.pid, signal.SIGKILL)
            wait_reaped(supervisor, process)
            died_at = clock.now
            before = process.restarts
            while process.restarts == before:
                clock.now += 0.5
                supervisor.watch_once()
            waits.append(clock.now - died_at)
            process.last_exit = ""
        assert waits == [BACKOFF_S, 2.0, 4.0, 8.0, 16.0, BACKOFF_MAX_S, BACKOFF_MAX_S]
        # A run that lasted: the next restart is quick again.
        clock.now += STABLE_AFTER_S
        os.kill(process.pid, signal.SIGKILL)
        wait_reaped(supervisor, process)
        clock.now += BACKOFF_S
        supervisor.watch_once()
        assert process.restarts == 8
    finally:
        mesh.stop_all([process])


def test_exit_statuses_read_as_words() -> None:
    assert describe_exit(9) == "killed by SIGKILL"
    assert describe_exit(3 << 8) == "exit code 3"
