"""`headrace cost` reads a real Prometheus (Debian's) that scrapes the
router's metrics: a table per tenant and model for a time window."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client import start_http_server

from headrace.cost_report import CostRow, cost_rows
from headrace.local.redis_server import RedisServer, free_port
from tests.integration.test_mesh_grpc import greedy, mesh_settings
from tests.support.mesh import InProcessMesh, start_mesh

pytestmark = pytest.mark.slow


def start_prometheus(tmp_path: Path, target: str) -> tuple[subprocess.Popen[bytes], str]:
    config = tmp_path / "prometheus.yml"
    config.write_text(
        f"global: {{scrape_interval: 1s}}\nscrape_configs:\n  - job_name: headrace-router\n"
        f"    static_configs: [{{targets: ['{target}']}}]\n"
    )
    port = free_port()
    process = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return process, f"http://127.0.0.1:{port}"


def cli_cost(window: str, url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "headrace.cli", "cost", "--window", window, "--prometheus", url],
        capture_output=True,
        text=True,
        timeout=60,
    )


# A model of this test's own: the router's counters live in this process, and
# other tests' answers to smollm2@1 (at other prices) would share its series.
# Prometheus' increase() extrapolates each series to the window's start, and
# clips that at the counter's zero: series whose history started elsewhere
# clip differently, so USD and engine seconds would drift apart.
MODEL = "costed"
SERIES = (f"{MODEL}@1", "default")


async def answered(url: str, at_least: float, timeout_s: float = 30.0) -> list[CostRow]:
    """The report once Prometheus has scraped `at_least` answers of this test's model in the window."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            rows = await asyncio.to_thread(cost_rows, url, "5m")
        except Exception:  # Prometheus still starting
            rows = []
        row = next((r for r in rows if (r.model, r.tenant) == SERIES), None)
        if row is not None and row.answers >= at_least:
            return rows
        if time.monotonic() > deadline:
            raise TimeoutError(f"Prometheus did not see {at_least} answers: {rows}")
        await asyncio.sleep(0.5)


async def ask(mesh: InProcessMesh, count: int, start: int) -> None:
    stub = mesh.router_stub()
    await asyncio.gather(*(stub.Generate(greedy(f"cost {start + i}", max_tokens=5, model=MODEL)) for i in range(count)))


async def test_cost_table_for_a_window(redis_server: RedisServer, tmp_path: Path) -> None:
    models = mesh_settings(redis_server.url).model_dump()["models"]
    models[MODEL] = {"default_version": "1", "versions": {"1": {"pool": "smollm2"}}}
    mesh = await start_mesh(mesh_settings(redis_server.url, models=models))
    metrics_port = free_port()
    server, _thread = start_http_server(metrics_port, addr="127.0.0.1")
    prometheus, url = start_prometheus(tmp_path, f"127.0.0.1:{metrics_port}")
    try:
        # A first answer, scraped, so the window holds the counters' start.
        await ask(mesh, 1, 0)
        await answered(url, 0)
        await asyncio.sleep(2.5)
        await ask(mesh, 4, 1)
        rows = await answered(url, 3.5)
        report = await asyncio.to_thread(cli_cost, "5m", url)
    finally:
        prometheus.terminate()
        prometheus.wait(timeout=30)
        server.shutdown()
        await mesh.close()
    (row,) = [r for r in rows if (r.model, r.tenant) == SERIES]
    assert row.usd > 0 and row.completion_tokens >= 15 and row.engine_seconds > 0
    # mesh_settings' pool costs 3.6 USD an hour: a second is a tenth of a cent.
    assert row.usd == pytest.approx(row.engine_seconds * 0.001, rel=0.05)
    assert report.returncode == 0, report.stderr
    lines = report.stdout.splitlines()
    assert any(line.startswith("default") and f"{MODEL}@1" in line for line in lines), report.stdout
    assert lines[-1].startswith("total")


def test_a_bad_window_is_refused_clearly() -> None:
    report = cli_cost("an hour", "http://127.0.0.1:9")
    assert report.returncode != 0 and "window: a Prometheus duration" in report.stderr
