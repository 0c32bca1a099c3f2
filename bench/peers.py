"""make bench-peers: what the mesh itself costs per request, next to a
peer, LiteLLM's proxy, in one run on one machine.

One fixed-response OpenAI backend (bench/peers_backend.py: starlette on
127.0.0.1, the same text at once) is called four ways: directly; through
LiteLLM's proxy (pinned, in its own venv, bench/.peers-venv: 1 worker,
master key, its default settings); through Headrace's HTTP gateway and its
gRPC Router API (one `openai`-engine pool in front of the backend; the
exact cache is looked up and misses, every prompt being new; the semantic
cache is off). Every answer is checked: the backend's text, and for
Headrace `miss` (an answer from the cache would measure nothing).

Per path, in alternating order, three repetitions (--reps): latency added over direct
at one request at a time (p50, p99, unary), streaming time to first token
added (p50), requests/s at 32 concurrent callers, and CPU seconds per 1,000
requests of each process on the path (from /proc, over the c=32 phase; the
backend's own CPU apart). The load generator shares the cores.

    python -m bench.peers [--seconds 5] [--reps 3] [--profile]

--profile: py-spy records each Headrace service during one extra c=32
phase; its top functions go into the results.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc.aio
import httpx2
from prometheus_client.parser import text_string_to_metric_families

from bench import machine_floor
from bench.harness import (
    RESULTS_DIR,
    Request,
    closed_loop,
    deadline_after,
    markdown_table,
    percentile,
    process_cpu_s,
    process_group_cpu_s,
    running_mesh,
    write_results,
)
from bench.latency_plot import latency_cdf_svg
from bench.peers_backend import MODEL, TEXT
from headrace.local.redis_server import free_port
from headrace.v1 import generation_pb2, router_pb2_grpc

PEERS_VENV = Path(__file__).parent / ".peers-venv"
LITELLM_VERSION = "1.108.7"
LITELLM_KEY = "sk-bench"
MAX_TOKENS = 16
CONCURRENCY = 32
PATHS = ("direct", "litellm", "headrace-http", "headrace-grpc")


def headrace_config(backend_port: int) -> dict[str, Any]:
    return {
        "pools": {
            "fixed": {
                "engine": {
                    "kind": "openai",
                    "base_url": f"http://127.0.0.1:{backend_port}/v1",
                    "max_concurrency": 256,
                },
                "workers": 1,
            }
        },
        "models": {MODEL: {"default_version": "1", "versions": {"1": {"pool": "fixed"}}}},
        "default_embedding_model": "",
        "cache": {"semantic": {"enabled": False}},
    }


@dataclass
class Process:
    """A process (group) on a path whose CPU is counted."""

    name: str
    pid: int
    # False: the process alone (Redis shares the bench's process group).
    group: bool = True

    def cpu_s(self) -> float:
        return process_group_cpu_s(self.pid) if self.group else process_cpu_s(self.pid)


@dataclass
class PeerPath:
    name: str
    # One request: (time to first token, total) in seconds.
    unary: Callable[[int], Awaitable[tuple[float, float]]]
    streamed: Callable[[int], Awaitable[tuple[float, float]]]
    processes: list[Process]
    results: list[dict[str, Any]] = field(default_factory=list)
    # Headrace's paths: the gRPC calls its cache and scheduler have served
    # so far, by method (their own metrics), read around the c=32 phase.
    served_calls: Callable[[], Awaitable[dict[str, float]]] | None = None


def served_calls(client: httpx2.AsyncClient, metrics_ports: list[int]) -> Callable[[], Awaitable[dict[str, float]]]:
    """Reads headrace_grpc_server_handled_total from each service's
    metrics endpoint: calls by method ("Cache/Lookup"), every status."""

    async def read() -> dict[str, float]:
        counts: dict[str, float] = {}
        for port in metrics_ports:
            text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
            for family in text_string_to_metric_families(text):
                if family.name != "headrace_grpc_server_handled":
                    continue
                for sample in family.samples:
                    if sample.name.endswith("_total"):
                        method = sample.labels["method"].rpartition("headrace.v1.")[2]
                        counts[method] = counts.get(method, 0.0) + sample.value
        return counts

    return read


class WrongAnswer(Exception):
    pass


def _prompt(path: str, index: int) -> list[dict[str, str]]:
    # New every time: Headrace's exact cache must miss.
    return [{"role": "user", "content": f"{path} {time.time_ns()} {index}: say hello"}]


def http_path(
    name: str, client: httpx2.AsyncClient, base_url: str, headers: dict[str, str], *, headrace: bool
) -> tuple[Callable[[int], Awaitable[tuple[float, float]]], Callable[[int], Awaitable[tuple[float, float]]]]:
    url = f"{base_url}/v1/chat/completions"

    async def unary(index: int) -> tuple[float, float]:
        body = {"model": MODEL, "messages": _prompt(name, index), "max_tokens": MAX_TOKENS, "temperature": 0}
        started = time.perf_counter()
        response = await client.post(url, json=body, headers=headers)
        elapsed = time.perf_counter() - started
        if response.status_code != 200:
            raise WrongAnswer(f"{name}: HTTP {response.status_code}: {response.text[:200]}")
        text = response.json()["choices"][0]["message"]["content"]
        if text != TEXT:
            raise WrongAnswer(f"{name}: answered {text!r}")
        if headrace and response.headers.get("x-headrace-cache") != "miss":
            raise WrongAnswer(f"{name}: x-headrace-cache {response.headers.get('x-headrace-cache')}")
        return elapsed, elapsed

    async def streamed(index: int) -> tuple[float, float]:
        body = {
            "model": MODEL,
            "messages": _prompt(name, index),
            "max_tokens": MAX_TOKENS,
            "temperature": 0,
            "stream": True,
        }
        started = time.perf_counter()
        first = 0.0
        parts: list[str] = []
        async with client.stream("POST", url, json=body, headers=headers) as response:
            if response.status_code != 200:
                raise WrongAnswer(f"{name}: HTTP {response.status_code}")
            if headrace and response.headers.get("x-headrace-cache") != "miss":
                raise WrongAnswer(f"{name}: x-headrace-cache {response.headers.get('x-headrace-cache')}")
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                for choice in json.loads(line[6:]).get("choices", []):
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        if not first:
                            first = time.perf_counter() - started
                        parts.append(content)
        if "".join(parts) != TEXT:
            raise WrongAnswer(f"{name}: streamed {''.join(parts)!r}")
        return first, time.perf_counter() - started

    return unary, streamed


def grpc_path(
    stub: router_pb2_grpc.RouterStub,
) -> tuple[Callable[[int], Awaitable[tuple[float, float]]], Callable[[int], Awaitable[tuple[float, float]]]]:
    def request(index: int) -> generation_pb2.GenerateRequest:
        turn = _prompt("headrace-grpc", index)[0]
        return generation_pb2.GenerateRequest(
            model=MODEL,
            messages=[generation_pb2.ChatMessage(role=turn["role"], content=turn["content"])],
            # Greedy, so the cache is looked up (and misses: a new prompt).
            sampling=generation_pb2.SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0),
        )

    async def unary(index: int) -> tuple[float, float]:
        started = time.perf_counter()
        answer = await stub.Generate(request(index))
        elapsed = time.perf_counter() - started
        if answer.text != TEXT or answer.route.cache != generation_pb2.CACHE_OUTCOME_MISS:
            raise WrongAnswer(f"headrace-grpc: {answer.text!r}, cache {answer.route.cache}")
        return elapsed, elapsed

    async def streamed(index: int) -> tuple[float, float]:
        started = time.perf_counter()
        first = 0.0
        parts: list[str] = []
        cache = None
        async for chunk in stub.GenerateStream(request(index)):
            if chunk.HasField("route"):
                cache = chunk.route.cache
            if chunk.text:
                if not first:
                    first = time.perf_counter() - started
                parts.append(chunk.text)
        if "".join(parts) != TEXT or cache != generation_pb2.CACHE_OUTCOME_MISS:
            raise WrongAnswer(f"headrace-grpc: streamed {''.join(parts)!r}, cache {cache}")
        return first, time.perf_counter() - started

    return unary, streamed


@contextmanager
def started_process(argv: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[int]:
    """A process in its own session (so its whole group's CPU can be read),
    stopped with its group afterwards."""
    with log.open("w") as out:
        process = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **(env or {})}
        )
    try:
        yield process.pid
    finally:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


async def wait_http(url: str, timeout_s: float, headers: dict[str, str] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx2.AsyncClient(timeout=2.0) as client:
        while True:
            try:
                if (await client.get(url, headers=headers)).status_code == 200:
                    return
            except httpx2.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not answer within {timeout_s:.0f} s")
            await asyncio.sleep(0.25)


@contextmanager
def litellm_proxy(backend_port: int, tmp: Path) -> Iterator[tuple[int, int] | None]:
    """LiteLLM's proxy in front of the backend: (port, pid), or None when
    its venv is missing (make bench-peers installs it)."""
    binary = PEERS_VENV / "bin" / "litellm"
    if not binary.exists():
        print(f"LiteLLM is not installed in {PEERS_VENV} (make bench-peers installs it): its path is skipped")
        yield None
        return
    installed = subprocess.run(
        [str(PEERS_VENV / "bin" / "python"), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    if installed != LITELLM_VERSION:
        raise SystemExit(f"{PEERS_VENV} holds litellm {installed or '?'}, not {LITELLM_VERSION}: remove it, rerun")
    config = tmp / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{MODEL}\n"
        f"      api_base: http://127.0.0.1:{backend_port}/v1\n"
        "      api_key: none\n"
        "general_settings:\n"
        f"  master_key: {LITELLM_KEY}\n"
    )
    port = free_port()
    argv = [str(binary), "--config", str(config), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
    # Its model cost map from the package, not fetched from the network.
    env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False"}
    with started_process(argv, tmp / "litellm.log", env) as pid:
        yield port, pid


def noting(request: Request, failures: Counter[str]) -> Request:
    """The request, with each failure's type and first words counted."""

    async def noted(index: int) -> tuple[float, float]:
        try:
            return await request(index)
        except Exception as exc:
            failures[f"{type(exc).__name__}: {str(exc)[:160]}"] += 1
            raise

    return noted


async def measure(path: PeerPath, seconds: float, rep: int) -> dict[str, Any]:
    """One repetition of every phase on one path. Failed or wrong answers
    are counted, with their reasons, not retried."""
    # One on its own first: a path that cannot answer at all stops the run.
    await path.unary(0)
    await path.streamed(0)
    failures: Counter[str] = Counter()
    unary, streamed = noting(path.unary, failures), noting(path.streamed, failures)
    await closed_loop(unary, concurrency=4, until=deadline_after(1.0))
    c1, _ = await closed_loop(unary, concurrency=1, until=deadline_after(seconds))
    stream, _ = await closed_loop(streamed, concurrency=1, until=deadline_after(seconds * 0.6))
    calls_before = await path.served_calls() if path.served_calls is not None else {}
    cpu_before = {p.name: p.cpu_s() for p in path.processes}
    loaded, rps = await closed_loop(unary, concurrency=CONCURRENCY, until=deadline_after(seconds * 1.2))
    cpu_used = {p.name: p.cpu_s() - cpu_before[p.name] for p in path.processes}
    calls_after = await path.served_calls() if path.served_calls is not None else {}
    calls = {method: count - calls_before.get(method, 0.0) for method, count in calls_after.items()}
    done = max(1, len(loaded.total_s))
    errors = c1.errors + stream.errors + loaded.errors
    result = {
        "path": path.name,
        "rep": rep,
        "c1_p50_ms": percentile(c1.total_s, 50) * 1000,
        "c1_p99_ms": percentile(c1.total_s, 99) * 1000,
        "c1_requests": len(c1.total_s),
        "stream_ttft_p50_ms": percentile(stream.ttft_s, 50) * 1000,
        "stream_requests": len(stream.ttft_s),
        "c32_rps": rps,
        "c32_p50_ms": percentile(loaded.total_s, 50) * 1000,
        "cpu_s_per_1k": {name: used / done * 1000 for name, used in cpu_used.items()},
        # Health checks and load reports come on their own clock: left out.
        "calls_per_request": {
            method: count / done for method, count in sorted(calls.items()) if count and not _background_call(method)
        },
        "errors": errors,
        "failures": dict(failures),
        "c1_cdf_ms": [percentile(c1.total_s, q) * 1000 for q in range(0, 101, 5)],
    }
    print(
        f"  {path.name:14} rep {rep}: c1 p50 {result['c1_p50_ms']:.2f} ms, stream TTFT p50 "
        f"{result['stream_ttft_p50_ms']:.2f} ms, c32 {rps:.0f} req/s, errors {errors}",
        flush=True,
    )
    for failure, count in failures.most_common(3):
        print(f"    {count} x {failure}", flush=True)
    return result


def _background_call(method: str) -> bool:
    return method.startswith("grpc.") or method.endswith(("/ReportLoad", "/GetPoolStatus", "/ListWorkers"))


def summary(paths: list[PeerPath], backend: str) -> tuple[list[dict[str, Any]], str]:
    """Per path: means over the repetitions, latency as added over direct in the same repetition."""
    direct = {r["rep"]: r for r in next(p for p in paths if p.name == "direct").results}
    rows: list[dict[str, Any]] = []
    for path in paths:
        runs = path.results

        def added(key: str, runs: list[dict[str, Any]] = runs) -> float:
            return statistics.fmean(r[key] - direct[r["rep"]][key] for r in runs)

        cpu: dict[str, float] = {}
        for run in runs:
            for name, value in run["cpu_s_per_1k"].items():
                cpu[name] = cpu.get(name, 0.0) + value / len(runs)
        own = {name: value for name, value in cpu.items() if name != backend}
        calls: dict[str, float] = {}
        for run in runs:
            for method, value in run.get("calls_per_request", {}).items():
                calls[method] = calls.get(method, 0.0) + value / len(runs)
        rows.append(
            {
                "path": path.name,
                "added_p50_ms": added("c1_p50_ms"),
                "added_p99_ms": added("c1_p99_ms"),
                "stream_ttft_added_p50_ms": added("stream_ttft_p50_ms"),
                "c32_rps": statistics.fmean(r["c32_rps"] for r in runs),
                "cpu_s_per_1k": sum(own.values()),
                "cpu_s_per_1k_by_process": own,
                # Each repetition's own total: how far one run moves.
                "cpu_s_per_1k_by_rep": {
                    r["rep"]: sum(v for name, v in r["cpu_s_per_1k"].items() if name != backend) for r in runs
                },
                "backend_cpu_s_per_1k": cpu.get(backend, 0.0),
                "calls_per_request": calls,
                "errors": sum(r.get("errors", 0) for r in runs),
            }
        )
    table = markdown_table(
        [
            "path",
            "added p50 / p99 at c=1 (ms)",
            "stream TTFT added p50 (ms)",
            f"req/s at c={CONCURRENCY}",
            "CPU s per 1k requests (by process)",
            "failed",
        ],
        [
            [
                row["path"],
                f"+{row['added_p50_ms']:.2f} / +{row['added_p99_ms']:.2f}",
                f"+{row['stream_ttft_added_p50_ms']:.2f}",
                f"{row['c32_rps']:.0f}",
                _cpu_cell(row),
                row["errors"],
            ]
            for row in rows
            if row["path"] != "direct"
        ],
    )
    return rows, table


def _calls_text(rows: list[dict[str, Any]]) -> str:
    """The cache's and the scheduler's gRPC calls per request at c=32."""
    lines = []
    for row in rows:
        calls: dict[str, float] = row.get("calls_per_request") or {}
        if calls:
            listed = ", ".join(f"{method} {value:.2f}" for method, value in calls.items() if value >= 0.005)
            lines.append(f"- {row['path']}: {sum(calls.values()):.2f} in all ({listed})")
    if not lines:
        return ""
    return (
        f"gRPC calls per request at c={CONCURRENCY} served by the cache and the scheduler (their "
        "`headrace_grpc_server_handled_total`; the worker's one Complete or Generate call per request apart):\n"
        + "\n".join(lines)
    )


def _cpu_cell(row: dict[str, Any]) -> str:
    by_process: dict[str, float] = row["cpu_s_per_1k_by_process"]
    cell = f"{row['cpu_s_per_1k']:.2f}"
    if len(by_process) > 1:
        cell += " (" + ", ".join(f"{n} {v:.2f}" for n, v in sorted(by_process.items()) if v >= 0.005) + ")"
    return cell


@asynccontextmanager
async def http_client() -> AsyncIterator[httpx2.AsyncClient]:
    limits = httpx2.Limits(max_connections=CONCURRENCY * 2, max_keepalive_connections=CONCURRENCY * 2)
    async with httpx2.AsyncClient(limits=limits, timeout=30.0) as client:
        yield client


@contextmanager
def profiling(processes: list[Process], out_dir: Path, seconds: float) -> Iterator[list[Path]]:
    """py-spy records each process for `seconds` (raw collapsed stacks)."""
    py_spy = str(PEERS_VENV / "bin" / "py-spy") if (PEERS_VENV / "bin" / "py-spy").exists() else shutil.which("py-spy")
    if py_spy is None:
        raise SystemExit(f"--profile needs py-spy (make bench-peers installs it in {PEERS_VENV})")
    records: list[subprocess.Popen[bytes]] = []
    outputs: list[Path] = []
    for process in processes:
        output = out_dir / f"{process.name}.txt"
        argv = [py_spy, "record", "--pid", str(process.pid), "--duration", str(int(seconds)), "--format", "raw"]
        records.append(
            subprocess.Popen(
                [*argv, "--rate", "200", "--nonblocking", "-o", str(output)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        outputs.append(output)
    try:
        yield outputs
    finally:
        for record in records:
            record.wait(timeout=seconds + 30)


_ENTRY_FRAMES = tuple(f"{name}.py:{line})" for name in ("__main__", "aio") for line in range(1000))


def top_functions(collapsed: Path, count: int = 10) -> dict[str, list[tuple[str, float]]]:
    """From a py-spy raw (collapsed) profile: the functions where samples
    ended (self time), and Headrace's own functions by the share of samples
    they were on the stack for (inclusive), each as (frame, share)."""
    total = 0
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    for line in collapsed.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        if not samples.isdigit():
            continue
        n = int(samples)
        total += n
        frames = stack.split(";")
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for frame in set(frames):
            # Headrace's code, less the entry points every sample passes through.
            if ("headrace/" in frame or "services/" in frame) and not frame.endswith(_ENTRY_FRAMES):
                inclusive[frame] = inclusive.get(frame, 0) + n
    if not total:
        return {"self": [], "headrace_inclusive": []}

    def ranked(counts: dict[str, int], limit: int) -> list[tuple[str, float]]:
        return [(frame, n / total) for frame, n in sorted(counts.items(), key=lambda item: -item[1])[:limit]]

    return {"self": ranked(own, count), "headrace_inclusive": ranked(inclusive, count)}


async def run(
    seconds: float, profile: bool, floor: machine_floor.MachineFloor, profile_dir: Path | None = None, reps: int = 3
) -> None:
    with tempfile.TemporaryDirectory(prefix="headrace-peers-") as tmp_dir:
        tmp = Path(tmp_dir)
        backend_port = free_port()
        backend_argv = [sys.executable, "-m", "bench.peers_backend", "--port", str(backend_port)]
        with (
            started_process(backend_argv, tmp / "backend.log") as backend_pid,
            litellm_proxy(backend_port, tmp) as litellm,
            running_mesh(headrace_config(backend_port)) as mesh,
        ):
            backend_url = f"http://127.0.0.1:{backend_port}"
            await wait_http(f"{backend_url}/stats", 30)
            backend = Process("backend", backend_pid)
            mesh_processes = [Process(p.name, p.pid) for p in mesh.processes]
            if mesh.redis_pid is not None:
                mesh_processes.append(Process("redis", mesh.redis_pid, group=False))
            async with http_client() as client, grpc.aio.insecure_channel(mesh.router_address) as channel:
                paths: list[PeerPath] = []
                unary, streamed = http_path("direct", client, backend_url, {}, headrace=False)
                paths.append(PeerPath("direct", unary, streamed, [backend]))
                if litellm is not None:
                    port, pid = litellm
                    headers = {"Authorization": f"Bearer {LITELLM_KEY}"}
                    await wait_http(f"http://127.0.0.1:{port}/health/liveliness", 180, headers)
                    unary, streamed = http_path("litellm", client, f"http://127.0.0.1:{port}", headers, headrace=False)
                    paths.append(PeerPath("litellm", unary, streamed, [Process("litellm", pid), backend]))
                ports = [p for p in (mesh.settings.cache.metrics_port, mesh.settings.scheduler.metrics_port) if p]
                calls = served_calls(client, ports)
                unary, streamed = http_path("headrace-http", client, mesh.http_url, {}, headrace=True)
                paths.append(PeerPath("headrace-http", unary, streamed, [*mesh_processes, backend], served_calls=calls))
                unary, streamed = grpc_path(router_pb2_grpc.RouterStub(channel))
                paths.append(PeerPath("headrace-grpc", unary, streamed, [*mesh_processes, backend], served_calls=calls))
                for rep in range(reps):
                    order = paths if rep % 2 == 0 else list(reversed(paths))
                    print(f"repetition {rep + 1}: {', '.join(p.name for p in order)}", flush=True)
                    for path in order:
                        path.results.append(await measure(path, seconds, rep))
                profiles: dict[str, dict[str, list[tuple[str, float]]]] = {}
                if profile:
                    http = next(p for p in paths if p.name == "headrace-http")
                    print("profiling the Headrace services under c=32 (HTTP) ...", flush=True)
                    profiled = [p for p in mesh_processes if p.group]
                    with profiling(profiled, tmp, seconds) as outputs:
                        await closed_loop(http.unary, concurrency=CONCURRENCY, until=deadline_after(seconds))
                    for process, output in zip(profiled, outputs, strict=True):
                        if output.exists():
                            profiles[process.name] = top_functions(output)
                            if profile_dir is not None:
                                shutil.copy(output, profile_dir / output.name)
                async with httpx2.AsyncClient() as probe:
                    asked = (await probe.get(f"{backend_url}/stats")).json()
        rows, table = summary(paths, backend="backend")
        if len(rows) > 1 and "litellm" in {r["path"] for r in rows}:
            ratio_notes = _ratios(rows)
            table += "\n\n" + ratio_notes
        calls_text = _calls_text(rows)
        if calls_text:
            table += "\n\n" + calls_text
        table += (
            f"\n\nOne run, this machine ({os.cpu_count()} cores, shared with the load generator); "
            f"{seconds:.0f} s per c=1 phase, {reps} repetitions in alternating order. CPU: each process "
            "(with its children) over the c=32 phase, per 1,000 requests; the backend's own CPU apart."
        )
        table += "\n\n" + floor.text()
        results: dict[str, Any] = {
            "litellm_version": LITELLM_VERSION if any(p.name == "litellm" for p in paths) else None,
            "machine_floor": floor.as_dict(),
            "seconds": seconds,
            "summary": rows,
            "runs": [r for p in paths for r in p.results],
            "backend_calls": asked,
            "profiles": {
                name: {kind: [[f, round(share, 4)] for f, share in top] for kind, top in tops.items()}
                for name, tops in profiles.items()
            },
        }
        if profiles:
            table += "\n\n" + _profile_text(profiles)
        table += f"\n\n![latency at one request at a time, CDF per path]({PLOT.name})"
        write_results("peers", results, "## bench-peers\n\n" + table)
        write_plot(results["runs"])


PLOT = RESULTS_DIR / "peers.svg"


def cdf_curves(runs: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Per path, the c=1 latency at every 5th percentile, averaged over
    the repetitions (each repetition's own percentiles)."""
    by_path: dict[str, list[list[float]]] = {}
    for run in runs:
        if run.get("c1_cdf_ms"):
            by_path.setdefault(run["path"], []).append(run["c1_cdf_ms"])
    return {path: [statistics.fmean(column) for column in zip(*cdfs, strict=True)] for path, cdfs in by_path.items()}


def write_plot(runs: list[dict[str, Any]]) -> None:
    PLOT.write_text(latency_cdf_svg(cdf_curves(runs), title="bench-peers: latency at c=1, unary (CDF per path)"))
    print(f"written: {PLOT}")


def _ratios(rows: list[dict[str, Any]]) -> str:
    by = {r["path"]: r for r in rows}
    litellm = by["litellm"]
    lines = []
    for name in ("headrace-http", "headrace-grpc"):
        row = by[name]
        theirs = litellm["cpu_s_per_1k_by_rep"]
        by_rep = [ours / theirs[rep] for rep, ours in sorted(row["cpu_s_per_1k_by_rep"].items()) if theirs.get(rep)]
        lines.append(
            f"- {name} vs LiteLLM: CPU per request {row['cpu_s_per_1k'] / litellm['cpu_s_per_1k']:.2f}x "
            f"(by repetition: {', '.join(f'{ratio:.2f}x' for ratio in by_rep)}), "
            f"req/s at c={CONCURRENCY} {row['c32_rps'] / litellm['c32_rps']:.2f}x, added p50 "
            f"{row['added_p50_ms']:.2f} vs {litellm['added_p50_ms']:.2f} ms"
        )
    return "\n".join(lines)


def _profile_text(profiles: dict[str, dict[str, list[tuple[str, float]]]]) -> str:
    parts = ["Profile (py-spy, c=32 over HTTP), share of each service's samples:"]
    for name, tops in profiles.items():
        parts.append(f"- {name}, self: " + "; ".join(f"{frame} {share:.0%}" for frame, share in tops["self"][:6]))
        parts.append(
            f"- {name}, Headrace code (inclusive): "
            + "; ".join(f"{frame} {share:.0%}" for frame, share in tops["headrace_inclusive"][:6])
        )
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description="The mesh's own cost per request vs LiteLLM's proxy")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each c=1 phase")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of every path, in alternating order")
    parser.add_argument(
        "--replot", action="store_true", help="redraw peers.svg from bench/results/peers.json; run nothing"
    )
    parser.add_argument("--profile", action="store_true", help="py-spy the Headrace services under load")
    parser.add_argument(
        "--profile-dir", type=Path, default=None, help="keep each service's raw py-spy profile (collapsed stacks) here"
    )
    args = parser.parse_args()
    if args.profile_dir is not None:
        args.profile_dir.mkdir(parents=True, exist_ok=True)
    if args.replot:
        write_plot(json.loads((RESULTS_DIR / "peers.json").read_text())["runs"])
        return
    if args.reps < 1:
        parser.error("--reps: at least 1")
    # Before anything else runs (and outside this benchmark's loop: it
    # runs loops of its own): what crossing between processes costs here.
    floor = machine_floor.measure()
    print(floor.text(), flush=True)
    asyncio.run(run(args.seconds, args.profile or args.profile_dir is not None, floor, args.profile_dir, args.reps))


if __name__ == "__main__":
    main()
