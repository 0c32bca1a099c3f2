"""The gateway as `headrace up` runs it: in the router's process, on
router.http_port, serving the router's metrics, stopped by `down`; a taken
HTTP port stops the router at start with a clear error."""

from __future__ import annotations

import socket

import httpx
import openai
import pytest

from tests.support.cli import headrace

pytestmark = pytest.mark.slow


@pytest.fixture
def env(cli_env: dict[str, str]) -> dict[str, str]:
    # About the gateway in the router's process: the cache stays exact-only.
    return {**cli_env, "HEADRACE_CACHE__SEMANTIC__ENABLED": "false"}


def test_the_router_process_serves_the_gateway_and_its_metrics(env: dict[str, str]) -> None:
    up = headrace(env, "up", "--detach", "--engine", "synthetic")
    assert up.returncode == 0, up.stdout + up.stderr
    url = f"http://127.0.0.1:{env['HEADRACE_ROUTER__HTTP_PORT']}"
    assert httpx.get(f"{url}/healthz").json() == {"status": "serving"}
    with openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as client:
        stream = client.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": "hi"}], max_tokens=5, stream=True
        )
        assert len([chunk for chunk in stream if chunk.choices]) == 5
    metrics = httpx.get(f"{url}/metrics").text
    # The router's own metrics, on the gateway: gRPC-side and HTTP-side together.
    assert 'headrace_router_ttft_seconds_count{model="smollm2@1"}' in metrics
    assert "headrace_http_requests_total" in metrics
    down = headrace(env, "down")
    assert down.returncode == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/healthz")


def test_a_taken_http_port_stops_the_router_at_start(env: dict[str, str]) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", int(env["HEADRACE_ROUTER__HTTP_PORT"])))
        squatter.listen()
        up = headrace(env, "up", "--detach", "--engine", "synthetic", "--timeout", "60")
    assert up.returncode != 0
    assert "router exited while starting" in up.stderr
    assert "could not bind the HTTP gateway" in up.stderr
