"""The whole mesh on one machine, as processes: what `headrace up`, `down`
and `status` drive. Redis is started too when nothing answers at
HEADRACE_REDIS_URL. Every process gets its own process group, so `down`
stops it with everything it spawned (vLLM's engine processes included)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlparse

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from headrace.batch.queue import consumer_heartbeat_key, consumer_name
from headrace.local.redis_server import (
    INSTALL_HINT,
    redis_answers,
    redis_key_exists,
    redis_server_argv,
    redis_server_binary,
)
from headrace.runtime.config import Settings
from headrace.runtime.errors import FailedPrecondition
from headrace.v1 import scheduler_pb2, scheduler_pb2_grpc

STATE_FILE = "mesh.json"


@dataclass
class ServiceProcess:
    name: str
    # Module run as `python -m MODULE ARGS...`; empty for Redis.
    module: str
    args: list[str]
    # host:port of its gRPC server (Redis: its port).
    address: str
    # Full gRPC service name checked for SERVING; empty for Redis.
    health_service: str
    log_path: str
    pid: int = 0
    # Processes without a gRPC server (batch consumers): SERVING while this
    # Redis key exists.
    heartbeat_key: str = ""


@dataclass(frozen=True)
class ServiceHealth:
    name: str
    address: str
    pid: int
    state: str  # SERVING, NOT_SERVING, DOWN


class MeshError(FailedPrecondition):
    """The mesh could not be started or stopped as asked."""


def health_state(address: str, service: str, timeout_s: float = 1.0) -> str:
    with grpc.insecure_channel(address) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
        except grpc.RpcError:
            return "DOWN"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


class LocalMesh:
    def __init__(self, settings: Settings, *, echo: Callable[[str], None] = print) -> None:
        self._settings = settings
        self._state_dir = Path(settings.state_dir)
        self._echo = echo

    @property
    def state_path(self) -> Path:
        return self._state_dir / STATE_FILE

    def plan(self) -> list[ServiceProcess]:
        """The processes of the mesh, in start order (Redis excluded)."""
        s = self._settings
        logs = self._state_dir / "logs"
        processes = [
            ServiceProcess(
                "cache",
                "services.cache",
                [],
                f"{s.cache.host}:{s.cache.port}",
                "headrace.v1.Cache",
                str(logs / "cache.log"),
            ),
            ServiceProcess(
                "scheduler",
                "services.scheduler",
                [],
                f"{s.scheduler.host}:{s.scheduler.port}",
                "headrace.v1.Scheduler",
                str(logs / "scheduler.log"),
            ),
        ]
        port = s.worker.base_port
        for pool, spec in s.pools.items():
            for index in range(spec.workers):
                name = f"worker-{pool}-{index}"
                processes.append(
                    ServiceProcess(
                        name,
                        "services.worker",
                        ["--pool", pool, "--index", str(index), "--port", str(port)],
                        f"{s.worker.host}:{port}",
                        "headrace.v1.Worker",
                        str(logs / f"{name}.log"),
                    )
                )
                processes.append(self._consumer_process(pool, index, f"{s.worker.host}:{port}", logs))
                port += 1
        processes.append(
            ServiceProcess(
                "router",
                "services.router",
                [],
                f"{s.router.host}:{s.router.port}",
                "headrace.v1.Router",
                str(logs / "router.log"),
            )
        )
        return processes

    def _consumer_process(self, pool: str, index: int, worker_address: str, logs: Path) -> ServiceProcess:
        """The batch consumer beside a worker (services/worker/consumer)."""
        name = consumer_name(pool, index)
        args = ["--pool", pool, "--index", str(index), "--worker", worker_address]
        offset = self._settings.worker.metrics_port_offset
        if offset is not None:
            # Next to its worker's metrics port (50061 -> 60061 -> 61061).
            args += ["--metrics-port", str(int(worker_address.rsplit(":", 1)[1]) + offset + 1000)]
        return ServiceProcess(
            name,
            "services.worker.consumer",
            args,
            worker_address,
            "",
            str(logs / f"{name}.log"),
            heartbeat_key=consumer_heartbeat_key(self._settings, name),
        )

    def _load_state(self) -> list[ServiceProcess]:
        if not self.state_path.exists():
            return []
        data = json.loads(self.state_path.read_text())
        return [ServiceProcess(**entry) for entry in data["processes"]]

    def _save_state(self, processes: list[ServiceProcess]) -> None:
        self._state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"processes": [asdict(p) for p in processes]}, indent=2))
        tmp.replace(self.state_path)

    def running(self) -> list[ServiceProcess]:
        return [p for p in self._load_state() if _alive(p.pid)]

    def up(self, *, env_overrides: dict[str, str], timeout_s: float = 600.0) -> list[ServiceProcess]:
        if self.running():
            raise MeshError(f"a mesh started from {self._state_dir} is already running; run `headrace down` first")
        started: list[ServiceProcess] = []
        try:
            redis_process = self._ensure_redis()
            if redis_process is not None:
                started.append(redis_process)
                self._save_state(started)
            env = {**os.environ, **env_overrides}
            plan = self.plan()
            # Cache and scheduler first, then the workers (the slow part:
            # model loading), the batch consumers beside them, then the router.
            stages = [
                plan[:2],
                [p for p in plan if p.module == "services.worker"],
                [p for p in plan if p.module == "services.worker.consumer"],
                [plan[-1]],
            ]
            deadline = time.monotonic() + timeout_s
            for stage in stages:
                for process in stage:
                    self._spawn(process, env)
                    started.append(process)
                    self._save_state(started)
                for process in stage:
                    self._wait_serving(process, deadline)
            self._wait_workers_registered(plan, deadline)
        except BaseException:
            self._stop(started)
            self.state_path.unlink(missing_ok=True)
            raise
        return started

    def _ensure_redis(self) -> ServiceProcess | None:
        url = self._settings.redis_url
        if redis_answers(url):
            return None
        parsed = urlparse(url)
        host, port = parsed.hostname or "127.0.0.1", parsed.port or 6379
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise MeshError(f"no Redis answers at {url}; start it, or point HEADRACE_REDIS_URL at one that runs")
        binary = redis_server_binary()
        if binary is None:
            raise MeshError(
                f"no Redis answers at {url} and redis-server is not installed: install it "
                f"({INSTALL_HINT}) or set HEADRACE_REDIS_URL to a running Redis"
            )
        data_dir = self._state_dir / "redis"
        data_dir.mkdir(parents=True, exist_ok=True)
        argv = redis_server_argv(binary, port=port, data_dir=data_dir, appendonly=True)
        process = ServiceProcess("redis", "", argv, f"{host}:{port}", "", str(self._state_dir / "logs" / "redis.log"))
        self._spawn(process, dict(os.environ))
        deadline = time.monotonic() + 10.0
        while not redis_answers(url):
            if not _alive(process.pid):
                raise MeshError(f"redis-server exited at start; see {process.log_path}\n{_tail(process.log_path)}")
            if time.monotonic() > deadline:
                raise MeshError(f"redis-server did not answer at {url} within 10 s; see {process.log_path}")
            time.sleep(0.1)
        self._echo(f"  redis       {url} (started: nothing answered there)")
        return process

    def _spawn(self, process: ServiceProcess, env: dict[str, str]) -> None:
        log_path = Path(process.log_path)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        argv = process.args if not process.module else [sys.executable, "-m", process.module, *process.args]
        with log_path.open("ab") as log:
            popen = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
            )
        process.pid = popen.pid

    def _wait_serving(self, process: ServiceProcess, deadline: float) -> None:
        while True:
            if not _alive(process.pid):
                raise MeshError(
                    f"{process.name} exited while starting; last lines of {process.log_path}:\n"
                    + _tail(process.log_path)
                )
            if self._state_of(process) == "SERVING":
                self._echo(f"  {process.name:<11} {process.address} SERVING")
                return
            if time.monotonic() > deadline:
                raise MeshError(f"{process.name} was not SERVING in time; see {process.log_path}")
            time.sleep(0.25)

    def _wait_workers_registered(self, plan: list[ServiceProcess], deadline: float) -> None:
        """Until every worker reports to the scheduler, the first request could
        find no worker: wait for them."""
        expected = {p.address for p in plan if p.module == "services.worker"}
        scheduler = next(p for p in plan if p.module == "services.scheduler")
        with grpc.insecure_channel(scheduler.address) as channel:
            stub = scheduler_pb2_grpc.SchedulerStub(channel)
            while True:
                try:
                    listing = stub.ListWorkers(scheduler_pb2.ListWorkersRequest(), timeout=2.0)
                except grpc.RpcError as exc:
                    if not _alive(scheduler.pid):
                        raise MeshError(
                            f"scheduler exited while workers registered; last lines of {scheduler.log_path}:\n"
                            + _tail(scheduler.log_path)
                        ) from exc
                    # A busy scheduler answering late is not a failed start: ask again.
                else:
                    if expected <= {w.info.endpoint for w in listing.workers if w.accepting}:
                        return
                if time.monotonic() > deadline:
                    raise MeshError("workers did not register with the scheduler in time")
                time.sleep(0.1)

    def down(self, *, grace_s: float = 20.0) -> list[ServiceProcess]:
        processes = self._load_state()
        self._stop(processes, grace_s=grace_s)
        self.state_path.unlink(missing_ok=True)
        return processes

    def _stop(self, processes: list[ServiceProcess], *, grace_s: float = 20.0) -> None:
        """SIGTERM each process group, newest first (router before workers,
        Redis last); SIGKILL whatever is left after the grace period."""
        for process in reversed(processes):
            _signal_group(process.pid, signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            while _group_alive(process.pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _group_alive(process.pid):
                _signal_group(process.pid, signal.SIGKILL)
            _reap(process.pid)

    def status(self) -> list[ServiceHealth]:
        processes = self._load_state() or self.plan()
        result = []
        for process in processes:
            result.append(ServiceHealth(process.name, process.address, process.pid, self._state_of(process)))
        return result

    def _state_of(self, process: ServiceProcess) -> str:
        if process.heartbeat_key:
            return "SERVING" if redis_key_exists(self._settings.redis_url, process.heartbeat_key) else "DOWN"
        if process.name == "redis" or not process.health_service:
            return "SERVING" if redis_answers(self._settings.redis_url) else "DOWN"
        return health_state(process.address, process.health_service)


def _alive(pid: int) -> bool:
    """Whether the process runs (a zombie does not)."""
    if pid <= 0:
        return False
    _reap(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def _reap(pid: int) -> None:
    """Collect a child that exited, if it is ours (so it is not a zombie)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process remains in the group."""
    if pgid <= 0:
        return False
    _reap(pgid)
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            # pid (comm) state ppid pgrp ...: comm may hold spaces, so split after ')'.
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    if pgid <= 0:
        return
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _tail(path: str, lines: int = 20) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
