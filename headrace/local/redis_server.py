"""A redis-server on loopback, for `headrace up` (when none answers), test
sessions and benchmarks (a private one each, on a free port)."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

import redis

INSTALL_HINT = "Debian/Ubuntu: `sudo apt-get install -y redis-server`"


def free_port() -> int:
    """A port free now that this process has not handed out before (see
    free_port_run: two ports picked one after the other for two servers of
    one mesh must differ, and a port the kernel lends to bind(0) and takes
    back may be lent again at once)."""
    return free_port_run(1)


def free_port_run(count: int) -> int:
    """A port P with P .. P+count-1 all free now and none of them handed
    out by this process before: worker n of the mesh listens on
    base_port + n, and a lone free port says nothing of the next.

    Taken below the kernel's ephemeral range where there is room: a port in
    that range, free when picked, can become the local port of some client
    connection (a starting mesh opens dozens) before its server binds it,
    and the server then fails to start ("could not bind")."""
    low = _ephemeral_low()
    if low - count > _LOWEST_PICKED:
        for _ in range(1000):
            base = _RNG.randrange(_LOWEST_PICKED, low - count)
            if _take(base, count):
                return base
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            base = int(sock.getsockname()[1])
        if base + count <= 65536 and _take(base, count):
            return base


def _take(base: int, count: int) -> bool:
    ports = range(base, base + count)
    if any(port in _HANDED_OUT for port in ports) or not all(_port_free(port) for port in ports):
        return False
    _HANDED_OUT.update(ports)
    return True


# Every port free_port and free_port_run returned in this process.
_HANDED_OUT: set[int] = set()
_RNG = random.Random()

# Ports picked by free_port_run start here (below it: services' usual ports).
_LOWEST_PICKED = 20000


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (Linux's default
    where it cannot be read)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def redis_server_binary() -> str | None:
    return shutil.which("redis-server")


def write_auth_config(path: Path, password: str) -> Path:
    """A redis.conf (0600) that sets `requirepass`: on argv the password
    would show in every user's `ps`."""
    escaped = password.replace("\\", "\\\\").replace('"', '\\"')
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(f'requirepass "{escaped}"\n')
    return path


def redis_server_argv(
    binary: str, *, port: int, data_dir: Path, appendonly: bool, config_file: Path | None = None
) -> list[str]:
    # Loopback only; append-only persistence so queued batch work survives a
    # restart; no RDB snapshots. config_file: e.g. write_auth_config's.
    return [
        binary,
        *([str(config_file)] if config_file is not None else []),
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(data_dir),
        "--appendonly", "yes" if appendonly else "no",
        "--save", "",
    ]  # fmt: skip


def redis_answers(url: str, timeout_s: float = 0.5) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
        return bool(client.ping())
    except redis.RedisError:
        return False


def redis_key_exists(url: str, key: str, timeout_s: float = 0.5) -> bool:
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s) as client:
            return bool(client.exists(key))
    except redis.RedisError:
        return False


class RedisServer:
    """A private redis-server owned by the caller (started, restarted, stopped)."""

    def __init__(
        self, data_dir: Path, *, appendonly: bool = True, port: int | None = None, password: str | None = None
    ) -> None:
        """`password`: requirepass (the url carries it)."""
        binary = redis_server_binary()
        if binary is None:
            raise RuntimeError(f"redis-server is not installed ({INSTALL_HINT})")
        self._binary = binary
        self._data_dir = data_dir
        self._appendonly = appendonly
        self.password = password
        self.port = port or free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs (fault tests SIGSTOP it)."""
        return self._process.pid if self._process is not None else None

    def start(self, timeout_s: float = 10.0) -> None:
        self._data_dir.mkdir(parents=True, exist_ok=True)
        config = None
        if self.password:
            config = write_auth_config(self._data_dir / "redis-auth.conf", self.password)
        argv = redis_server_argv(
            self._binary, port=self.port, data_dir=self._data_dir, appendonly=self._appendonly, config_file=config
        )
        self._process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while not redis_answers(self.url):
            if self._process.poll() is not None:
                raise RuntimeError(f"redis-server exited at start (port {self.port})")
            if time.monotonic() > deadline:
                raise TimeoutError(f"redis-server did not answer on port {self.port} within {timeout_s}s")
            time.sleep(0.05)

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
            self._process = None

    def kill(self) -> None:
        """Stop it abruptly (fault tests)."""
        if self._process is not None:
            self._process.kill()
            self._process.wait(timeout=10)
            self._process = None

    def restart(self) -> None:
        self.stop()
        self.start()
