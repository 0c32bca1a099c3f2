"""The whole mesh on one machine, as processes: what `headrace up`, `down`
and `status` drive. Redis is started too when nothing answers at
HEADRACE_REDIS_URL. Every process gets its own process group, so `down`
stops it with everything it spawned (vLLM's engine processes included).
`up` runs all this inside a supervisor process (headrace/local/supervisor.py)
that restarts what dies; `down` stops the supervisor first."""

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
from headrace.local.deployment_secrets import local_deployment, redacted, url_password
from headrace.local.redis_server import (
    INSTALL_HINT,
    redis_answers,
    redis_key_exists,
    redis_server_argv,
    redis_server_binary,
    write_auth_config,
)
from headrace.runtime.channels import open_sync_channel
from headrace.runtime.config import Settings
from headrace.runtime.errors import FailedPrecondition
from headrace.runtime.service_certs import Role
from headrace.runtime.service_identity import ServiceIdentity, service_identity
from headrace.v1 import scheduler_pb2, scheduler_pb2_grpc

STATE_FILE = "mesh.json"
# While a process starts, `up` says every this often what its log says.
PROGRESS_EVERY_S = 10.0


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
    # Times the supervisor restarted it, and how its last run ended.
    restarts: int = 0
    last_exit: str = ""


@dataclass(frozen=True)
class ServiceHealth:
    name: str
    address: str
    pid: int
    state: str  # SERVING, NOT_SERVING, DOWN
    restarts: int = 0
    last_exit: str = ""


class MeshError(FailedPrecondition):
    """The mesh could not be started or stopped as asked."""


# The role behind each internal service's port; the router's is public.
_SERVICE_ROLES = {
    "headrace.v1.Cache": Role.CACHE,
    "headrace.v1.Scheduler": Role.SCHEDULER,
    "headrace.v1.Worker": Role.WORKER,
}


def health_state(address: str, service: str, identity: ServiceIdentity | None = None, timeout_s: float = 1.0) -> str:
    """`identity`: the caller's credential, for internal services with
    service identity (the server's role comes from `service`)."""
    role = _SERVICE_ROLES.get(service)
    with open_sync_channel(address, identity if role else None, server=role or Role.ROUTER) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
        except grpc.RpcError:
            return "DOWN"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


class LocalMesh:
    def __init__(self, settings: Settings, *, echo: Callable[[str], None] = print) -> None:
        # As configured, plus the secrets `up` made for a deployment with
        # API keys (certificates, Redis password), when they exist.
        self._configured = settings
        self._settings = local_deployment(settings, create=False)
        self._state_dir = Path(settings.state_dir)
        self._echo = echo
        # Set in the supervisor process: saved with the state, so `down` stops it first.
        self.supervisor_pid = 0
        # The environment `up` gave every process (with the deployment's
        # secrets when keys are configured): restarts get the same.
        self.process_env: dict[str, str] = dict(os.environ)

    @property
    def settings(self) -> Settings:
        return self._settings

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
            *self._scheduler_processes(logs),
        ]
        for pool in s.pools:
            for index in range(self.initial_workers(pool)):
                processes += self.worker_processes(pool, index)
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

    def _scheduler_processes(self, logs: Path) -> list[ServiceProcess]:
        """One per replica (scheduler.replicas), on consecutive ports; a
        single one keeps the plain name."""
        targets = self._settings.scheduler.targets()
        host = self._settings.scheduler.host
        processes = []
        for index, target in enumerate(targets):
            name = "scheduler" if len(targets) == 1 else f"scheduler-{index}"
            port = target.rsplit(":", 1)[1]
            processes.append(
                ServiceProcess(
                    name,
                    "services.scheduler",
                    ["--replica", str(index)],
                    f"{host}:{port}",
                    "headrace.v1.Scheduler",
                    str(logs / f"{name}.log"),
                )
            )
        return processes

    def initial_workers(self, pool: str) -> int:
        """Workers a pool starts with: its configured count, within the
        autoscaler's bounds when it has one."""
        spec = self._settings.pools[pool]
        scaling = self._settings.scheduler.for_pool(pool).autoscale
        if not scaling.enabled:
            return spec.workers
        return max(scaling.min_workers, min(scaling.max_workers, spec.workers))

    def max_workers(self, pool: str) -> int:
        """Workers a pool may ever have here (its share of the port range)."""
        spec = self._settings.pools[pool]
        scaling = self._settings.scheduler.for_pool(pool).autoscale
        return max(spec.workers, scaling.max_workers) if scaling.enabled else spec.workers

    def worker_port(self, pool: str, index: int) -> int:
        """Ports from worker.base_port up, in pool order; each pool keeps
        room for its most workers, so one scaling up never takes another's."""
        port = self._settings.worker.base_port
        for name in self._settings.pools:
            if name == pool:
                return port + index
            port += self.max_workers(name)
        raise KeyError(pool)

    def worker_processes(self, pool: str, index: int) -> list[ServiceProcess]:
        """Worker `index` of a pool and the batch consumer beside it."""
        s = self._settings
        logs = self._state_dir / "logs"
        port = self.worker_port(pool, index)
        name = f"worker-{pool}-{index}"
        worker = ServiceProcess(
            name,
            "services.worker",
            ["--pool", pool, "--index", str(index), "--port", str(port)],
            f"{s.worker.host}:{port}",
            "headrace.v1.Worker",
            str(logs / f"{name}.log"),
        )
        return [worker, self._consumer_process(pool, index, worker.address, logs)]

    def spawn(self, process: ServiceProcess, env: dict[str, str]) -> None:
        """Start a process of the plan that is not running (a scale-up)."""
        self._echo(f"  {process.name:<11} starting (log: {process.log_path})")
        self._spawn(process, env)

    def retire(self, process: ServiceProcess) -> None:
        """Ask a process to stop (SIGTERM: a worker finishes what it runs,
        within worker.drain_timeout_s; a consumer its current rows)."""
        _signal_group(process.pid, signal.SIGTERM)

    def _consumer_process(self, pool: str, index: int, worker_address: str, logs: Path) -> ServiceProcess:
        """The batch consumer beside a worker (services/worker/consumer)."""
        name = consumer_name(pool, index)
        args = ["--pool", pool, "--index", str(index), "--worker", worker_address]
        offset = self._settings.worker.metrics_port_offset
        if offset is not None:
            # Next to its worker's metrics port (50061 -> 61061 -> 62061).
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

    def _load_supervisor_pid(self) -> int:
        if not self.state_path.exists():
            return 0
        return int(json.loads(self.state_path.read_text()).get("supervisor_pid", 0))

    def _save_state(self, processes: list[ServiceProcess]) -> None:
        self._state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        state = {"supervisor_pid": self.supervisor_pid, "processes": [asdict(p) for p in processes]}
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_path)

    def save_state(self, processes: list[ServiceProcess]) -> None:
        """Record the processes (the supervisor, after each restart)."""
        self._save_state(processes)

    def respawn(self, process: ServiceProcess, env: dict[str, str]) -> None:
        """Start a process again, with what its dead run left in its group
        (an engine's own processes, holding its port) killed first."""
        _signal_group(process.pid, signal.SIGKILL)
        self._spawn(process, env)

    def running(self) -> list[ServiceProcess]:
        return [p for p in self._load_state() if _alive(p.pid)]

    def up(self, *, env_overrides: dict[str, str], timeout_s: float = 600.0) -> list[ServiceProcess]:
        if self.running():
            raise MeshError(f"a mesh started from {self._state_dir} is already running; run `headrace down` first")
        started: list[ServiceProcess] = []
        try:
            env = {**os.environ, **env_overrides, **self._secure()}
            self.process_env = env
            redis_process = self._ensure_redis()
            if redis_process is not None:
                started.append(redis_process)
                self._save_state(started)
            plan = self.plan()
            # Cache and scheduler first, then the workers (the slow part:
            # model loading), the batch consumers beside them, then the router.
            stages = [
                [p for p in plan if p.module in ("services.cache", "services.scheduler")],
                [p for p in plan if p.module == "services.worker"],
                [p for p in plan if p.module == "services.worker.consumer"],
                [plan[-1]],
            ]
            deadline = time.monotonic() + timeout_s
            for stage in stages:
                for process in stage:
                    self._echo(f"  {process.name:<11} starting (log: {process.log_path})")
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

    def _secure(self) -> dict[str, str]:
        """With API keys: make the deployment's secrets (first `up` only)
        and hand them to every process through its environment."""
        if not self._configured.auth_enabled:
            return {}
        url = self._configured.redis_url
        # A Redis of the user's own, answering without a password, is used as it is.
        own_open_redis = url_password(url) is None and redis_answers(url)
        if own_open_redis:
            self._echo(f"  warning: the Redis at {url} has no password; see docs/security.md")
        self._settings = local_deployment(self._configured, create=True, redis_password=not own_open_redis)
        env = {"HEADRACE_REDIS_URL": self._settings.redis_url}
        certs_dir = self._settings.internal_tls.certs_dir
        if certs_dir is not None:
            env["HEADRACE_INTERNAL_TLS__CERTS_DIR"] = str(certs_dir)
        return env

    def admin_identity(self) -> ServiceIdentity | None:
        """The operator's certificate for status calls; None in open dev mode."""
        try:
            return service_identity(self._settings, Role.ADMIN)
        except FailedPrecondition:
            # Keys configured, never `up` here: nothing of ours can be running.
            return None

    def _ensure_redis(self) -> ServiceProcess | None:
        url = self._settings.redis_url
        if redis_answers(url):
            return None
        parsed = urlparse(url)
        host, port = parsed.hostname or "127.0.0.1", parsed.port or 6379
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise MeshError(
                f"no Redis answers at {redacted(url)}; start it, or point HEADRACE_REDIS_URL at one that runs"
            )
        binary = redis_server_binary()
        if binary is None:
            raise MeshError(
                f"no Redis answers at {redacted(url)} and redis-server is not installed: install it "
                f"({INSTALL_HINT}) or set HEADRACE_REDIS_URL to a running Redis"
            )
        data_dir = self._state_dir / "redis"
        data_dir.mkdir(parents=True, exist_ok=True)
        password = url_password(url)
        config = write_auth_config(data_dir / "redis-auth.conf", password) if password else None
        argv = redis_server_argv(binary, port=port, data_dir=data_dir, appendonly=True, config_file=config)
        process = ServiceProcess("redis", "", argv, f"{host}:{port}", "", str(self._state_dir / "logs" / "redis.log"))
        self._spawn(process, dict(os.environ))
        deadline = time.monotonic() + 10.0
        while not redis_answers(url):
            if not _alive(process.pid):
                raise MeshError(f"redis-server exited at start; see {process.log_path}\n{_tail(process.log_path)}")
            if time.monotonic() > deadline:
                raise MeshError(f"redis-server did not answer at {redacted(url)} within 10 s; see {process.log_path}")
            time.sleep(0.1)
        self._echo(f"  redis       {redacted(url)} (started: nothing answered there)")
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
        # A worker loading its model takes a minute: say what it is doing.
        report_at = time.monotonic() + PROGRESS_EVERY_S
        started = time.monotonic()
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
                raise MeshError(
                    f"{process.name} was not SERVING in time; last lines of {process.log_path}:\n"
                    + _tail(process.log_path)
                )
            if time.monotonic() >= report_at:
                report_at += PROGRESS_EVERY_S
                last = _tail(process.log_path, 1).strip()[:160]
                self._echo(f"  {process.name:<11} still starting ({time.monotonic() - started:.0f}s): {last}")
            time.sleep(0.25)

    def _wait_workers_registered(self, plan: list[ServiceProcess], deadline: float) -> None:
        """Until every worker reports to every scheduler replica, the first
        request could find no worker: wait for them."""
        for scheduler in (p for p in plan if p.module == "services.scheduler"):
            self._wait_registered_with(scheduler, plan, deadline)

    def _wait_registered_with(self, scheduler: ServiceProcess, plan: list[ServiceProcess], deadline: float) -> None:
        expected = {p.address for p in plan if p.module == "services.worker"}
        with open_sync_channel(scheduler.address, self.admin_identity(), server=Role.SCHEDULER) as channel:
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
                    raise MeshError(f"workers did not register with {scheduler.name} in time")
                time.sleep(0.1)

    def down(self, *, grace_s: float = 20.0) -> list[ServiceProcess]:
        # The supervisor first: it would restart what is being stopped. On
        # SIGTERM it stops its processes itself.
        supervisor = self._load_supervisor_pid()
        if supervisor and _alive(supervisor):
            _signal_group(supervisor, signal.SIGTERM)
            deadline = time.monotonic() + grace_s * 2
            while _alive(supervisor) and time.monotonic() < deadline:
                time.sleep(0.1)
        processes = self._load_state()
        self._stop(processes, grace_s=grace_s)
        self.state_path.unlink(missing_ok=True)
        return processes

    def stop_all(self, processes: list[ServiceProcess]) -> None:
        """Stop the processes, newest first (the supervisor, on SIGTERM)."""
        self._stop(processes)

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
            result.append(
                ServiceHealth(
                    process.name,
                    process.address,
                    process.pid,
                    self._state_of(process),
                    restarts=process.restarts,
                    last_exit=process.last_exit,
                )
            )
        return result

    def _state_of(self, process: ServiceProcess) -> str:
        if process.heartbeat_key:
            return "SERVING" if redis_key_exists(self._settings.redis_url, process.heartbeat_key) else "DOWN"
        if process.name == "redis" or not process.health_service:
            return "SERVING" if redis_answers(self._settings.redis_url) else "DOWN"
        return health_state(process.address, process.health_service, self.admin_identity())


def is_running(process: ServiceProcess) -> bool:
    return _alive(process.pid)


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
