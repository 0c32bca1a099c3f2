"""python -m headrace.local.supervisor: starts the local mesh and keeps it
running. `headrace up` runs it as a process of its own (so `up --detach`
can return) and reads its progress on stdout, one JSON object a line:

    {"echo": "  worker-smollm2-0 starting ..."}   show this line
    {"ready": true}                                 everything is SERVING
    {"error": "MeshError: ..."}                     the start failed (exit 1)

Once ready, it watches its children: one that exits (a crash, kill -9,
the OOM killer) is started again after a backoff (1 s, doubling to 30 s;
back to 1 s once a run lasted 30 s), with whatever its dead run left in its
process group killed first. Restarts and how the last run ended are in the
state file, so `headrace status` shows them. SIGTERM (`headrace down`):
stop every process, newest first, and exit.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TextIO

import grpc

from headrace.local.actuator import Actuator, LocalActuator, fetch_decisions, follow
from headrace.local.mesh import LocalMesh, ServiceProcess
from headrace.runtime.config import load_settings
from headrace.runtime.errors import HeadraceError

log = logging.getLogger("headrace.local.supervisor")

BACKOFF_S = 1.0
BACKOFF_MAX_S = 30.0
# A run this long resets the backoff: the process was healthy, then died.
STABLE_AFTER_S = 30.0
WATCH_EVERY_S = 0.25
# How often the autoscaler's decisions are read and followed.
FOLLOW_EVERY_S = 1.0


def describe_exit(status: int) -> str:
    """os.waitpid's status as a person reads it."""
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            return f"killed by {signal.Signals(number).name}"
        except ValueError:
            return f"killed by signal {number}"
    return f"exit code {os.WEXITSTATUS(status)}"


@dataclass
class _Watch:
    process: ServiceProcess
    started_at: float
    backoff_s: float = BACKOFF_S
    # When the dead process is due to start again (None: it runs).
    restart_at: float | None = None


class Supervisor:
    def __init__(
        self,
        mesh: LocalMesh,
        processes: list[ServiceProcess],
        env: dict[str, str],
        *,
        respawn: Callable[[ServiceProcess, dict[str, str]], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._mesh = mesh
        self._processes = processes
        self._env = env
        self._respawn = respawn or mesh.respawn
        self._clock = clock
        now = clock()
        self._watches = [_Watch(process, now) for process in processes]
        self._actuator: tuple[Actuator, list[str], list[str]] | None = None

    @property
    def processes(self) -> list[ServiceProcess]:
        return self._processes

    def add(self, process: ServiceProcess) -> None:
        """Watch a process started after `up` (a scale-up)."""
        self._processes.append(process)
        self._watches.append(_Watch(process, self._clock()))
        self._mesh.save_state(self._processes)

    def forget(self, process: ServiceProcess) -> None:
        """Stop watching a process that is being retired (a scale-down): its
        exit is expected, not restarted."""
        self._watches = [w for w in self._watches if w.process is not process]
        self._processes.remove(process)
        self._mesh.save_state(self._processes)

    def watch_once(self) -> None:
        """Collect exited children; start again those whose backoff is over."""
        changed = False
        now = self._clock()
        for watch in self._watches:
            process = watch.process
            if watch.restart_at is not None:
                if now >= watch.restart_at:
                    process.restarts += 1
                    self._respawn(process, self._env)
                    log.warning("%s started again (restart %d, pid %d)", process.name, process.restarts, process.pid)
                    watch.restart_at, watch.started_at = None, now
                    changed = True
                continue
            ended = _ended(process.pid)
            if ended is None:
                continue
            process.last_exit = ended
            if now - watch.started_at >= STABLE_AFTER_S:
                watch.backoff_s = BACKOFF_S
            watch.restart_at = now + watch.backoff_s
            log.warning("%s (pid %d) ended: %s; restarting in %.0fs", process.name, process.pid, ended, watch.backoff_s)
            watch.backoff_s = min(BACKOFF_MAX_S, watch.backoff_s * 2)
            changed = True
        if changed:
            self._mesh.save_state(self._processes)

    def follow_decisions(self, actuator: Actuator, pools: list[str], scheduler_addresses: list[str]) -> None:
        """Also make the autoscaler's decisions for these pools real (local
        actuator), every FOLLOW_EVERY_S, from the first scheduler replica
        that answers (a dead replica must not freeze the pool's size)."""
        self._actuator = (actuator, pools, scheduler_addresses)

    def follow_once(self) -> None:
        if self._actuator is None:
            return
        actuator, pools, addresses = self._actuator
        for address in addresses:
            try:
                decisions = fetch_decisions(address, self._mesh.admin_identity())
            except grpc.RpcError as exc:
                log.warning("autoscaling: no decision from the scheduler at %s (%s)", address, exc.code().name)
                continue
            follow(actuator, decisions, pools)
            return
        # Every replica restarting: keep what runs, ask again later.

    def run(self, stopping: Callable[[], bool]) -> None:
        follow_at = self._clock()
        while not stopping():
            self.watch_once()
            if self._clock() >= follow_at:
                follow_at = self._clock() + FOLLOW_EVERY_S
                self.follow_once()
            time.sleep(WATCH_EVERY_S)


def _ended(pid: int) -> str | None:
    """How the child ended, if it has (it is reaped now); None while it runs."""
    try:
        reaped, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        # Not a child of ours (reaped elsewhere): gone or not, cause unknown.
        return None if _exists(pid) else "ended (exit status unknown)"
    return describe_exit(status) if reaped == pid else None


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Progress:
    """Progress for `headrace up` on stdout while it listens; the log after."""

    def __init__(self, out: TextIO) -> None:
        self._out: TextIO | None = out

    def send(self, **message: object) -> None:
        if self._out is None:
            log.info("%s", message)
            return
        try:
            self._out.write(json.dumps(message) + "\n")
            self._out.flush()
        except (BrokenPipeError, OSError):
            # `up` went away (Ctrl-C while starting): carry on without it.
            self._out = None

    def echo(self, line: str) -> None:
        log.info("%s", line)
        self.send(echo=line)

    def detach(self) -> None:
        """`up` has what it needs: stdout goes nowhere from now on."""
        self._out = None
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m headrace.local.supervisor")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds for everything to be SERVING")
    args = parser.parse_args()
    settings = load_settings()
    logs = Path(settings.state_dir) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        filename=logs / "supervisor.log", level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s"
    )
    progress = _Progress(sys.stdout)
    stop = False

    def _request_stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    mesh = LocalMesh(settings, echo=progress.echo)
    mesh.supervisor_pid = os.getpid()
    try:
        processes = mesh.up(env_overrides={}, timeout_s=args.timeout)
    except HeadraceError as exc:
        progress.send(error=f"{type(exc).__name__}: {exc}")
        sys.exit(1)
    except BaseException as exc:
        progress.send(error=f"{type(exc).__name__}: {exc}")
        raise
    # From here SIGTERM means: stop the mesh and exit.
    signal.signal(signal.SIGTERM, _request_stop)
    signal.signal(signal.SIGINT, _request_stop)
    progress.send(ready=True)
    progress.detach()
    log.info("mesh SERVING; supervising %d processes", len(processes))
    # What `up` gave each process, secrets included, for restarts and new workers.
    env = mesh.process_env
    supervisor = Supervisor(mesh, processes, env)
    autoscaled = [pool for pool in settings.pools if settings.scheduler.for_pool(pool).autoscale.enabled]
    if autoscaled:
        supervisor.follow_decisions(
            LocalActuator.over(mesh, supervisor, processes, env),
            autoscaled,
            settings.scheduler.targets(),
        )
    try:
        supervisor.run(lambda: stop)
    finally:
        log.info("stopping the mesh")
        mesh.stop_all(processes)


if __name__ == "__main__":
    main()
