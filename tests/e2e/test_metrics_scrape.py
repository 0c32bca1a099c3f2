"""The shipped monitoring sees the mesh: with the mesh up on its default
addresses (synthetic engine), every target in compose/prometheus/prometheus.yml
answers with metrics, and every metric a dashboard panel or an SLO rule
queries is among what was scraped."""

from __future__ import annotations

import fcntl
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from headrace.local.redis_server import free_port
from tests.support.cli import headrace

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[2]
PROMETHEUS = ROOT / "compose" / "prometheus"
DASHBOARDS = ROOT / "compose" / "grafana" / "dashboards"
# Tests that bind the default ports take this lock (see the README's testing notes).
PORTS_LOCK = "/tmp/headrace-ports.lock"
# A metric name, not a recorded series (level:metric:operations) that holds one.
_METRIC = re.compile(r"(?<![\w:])(headrace_[a-z0-9_]+)(?![\w:])")
_TYPE_LINE = re.compile(r"^# TYPE (\S+) (\w+)$", re.MULTILINE)


def scrape_targets() -> list[str]:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    urls: list[str] = []
    for job in config["scrape_configs"]:
        path = job.get("metrics_path", "/metrics")
        for group in job["static_configs"]:
            urls.extend(f"http://{target}{path}" for target in group["targets"])
    return urls


def queried_metrics() -> dict[str, set[str]]:
    """Metric names each dashboard and rule file queries."""
    found: dict[str, set[str]] = {}
    for dashboard in sorted(DASHBOARDS.glob("*.json")):
        panels = json.loads(dashboard.read_text())["panels"]
        exprs = [t["expr"] for p in panels for t in p.get("targets", []) if "expr" in t]
        found[dashboard.name] = {m for e in exprs for m in _METRIC.findall(e)}
    for rules in sorted((PROMETHEUS / "rules").glob("*.yml")):
        groups = yaml.safe_load(rules.read_text())["groups"]
        exprs = [r["expr"] for g in groups for r in g["rules"]]
        found[rules.name] = {m for e in exprs for m in _METRIC.findall(e)}
    return found


def exposed_names(text: str) -> set[str]:
    """Every series name the exposition declares (a declared family is
    there even before its first sample: Prometheus sees it on the next)."""
    names: set[str] = set()
    for name, kind in _TYPE_LINE.findall(text):
        names.add(name)
        if kind == "counter":
            names.add(f"{name}_total")
        elif kind == "histogram":
            names.update(f"{name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
    return names


@pytest.fixture
def default_mesh(tmp_path: Path) -> Iterator[dict[str, str]]:
    """The mesh on the default addresses (the ones the config names), with
    a private Redis and state directory."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEADRACE_")}
    env.update(
        HEADRACE_STATE_DIR=str(tmp_path / "state"),
        HEADRACE_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
        # About metrics, not the semantic cache (it has tests of its own).
        HEADRACE_CACHE__SEMANTIC__ENABLED="false",
    )
    with open(PORTS_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        up = headrace(env, "up", "--detach", "--engine", "synthetic")
        try:
            assert up.returncode == 0, up.stdout + up.stderr
            yield env
        finally:
            headrace(env, "down", timeout=120)


def test_every_target_answers_and_every_queried_metric_is_scraped(default_mesh: dict[str, str]) -> None:
    chat = {"model": "smollm2", "messages": [{"role": "user", "content": "count me"}], "max_tokens": 4}
    with httpx.Client(base_url="http://127.0.0.1:8000", timeout=30) as client:
        first = client.post("/v1/chat/completions", json={**chat, "temperature": 0})
        assert first.status_code == 200 and first.headers["x-headrace-cache"] == "miss", first.text
        for _ in range(100):  # the answer is stored off the request's path
            again = client.post("/v1/chat/completions", json={**chat, "temperature": 0})
            if again.headers["x-headrace-cache"] == "hit-exact":
                break
            time.sleep(0.05)
        assert again.headers["x-headrace-cache"] == "hit-exact"
        assert client.post("/v1/embeddings", json={"model": "minilm", "input": "x"}).status_code == 200
    grpc_answer = headrace(default_mesh, "generate", "Say hello", "--max-tokens", "3")
    assert grpc_answer.returncode == 0, grpc_answer.stderr

    scraped: dict[str, str] = {}
    with httpx.Client(timeout=10) as client:
        for url in scrape_targets():
            response = client.get(url)
            assert response.status_code == 200, url
            scraped[url] = response.text
    exposed = set().union(*(exposed_names(text) for text in scraped.values()))
    missing = {source: sorted(names - exposed) for source, names in queried_metrics().items() if names - exposed}
    assert not missing, f"queried but not exposed by any target: {missing}"
    assert len(queried_metrics()) >= 2

    # HTTP answers are counted with gRPC ones, in the header's words.
    router = scraped["http://127.0.0.1:8000/metrics"]
    assert re.search(r'^headrace_router_cache_total\{outcome="hit-exact"\} [1-9]', router, re.MULTILINE)
    assert re.search(r'^headrace_router_cache_total\{outcome="miss"\} [1-9]', router, re.MULTILINE)
    assert "CACHE_OUTCOME_" not in router
