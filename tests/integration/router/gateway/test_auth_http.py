"""API keys on the HTTP gateway: one middleware, every endpoint (the
WebSocket's handshake included); /healthz needs none."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
import websockets
from openai.types.chat import ChatCompletionMessageParam
from websockets.asyncio.client import connect

from headrace.local.redis_server import RedisServer
from headrace.runtime.config import hash_api_key
from tests.integration.router.gateway.conftest import gateway_settings, running_gateway
from tests.support.mesh import InProcessMesh

CHAT = {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
ENDPOINTS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("POST", "/v1/chat/completions", CHAT),
    ("POST", "/v1/chat/completions", {**CHAT, "stream": True}),
    ("POST", "/v1/completions", {"prompt": "hi", "max_tokens": 2}),
    ("POST", "/v1/embeddings", {"input": "hi"}),
    ("GET", "/v1/models", None),
    ("GET", "/v1/models/smollm2", None),
    ("GET", "/metrics", None),
    # Unknown paths too: a caller without a key learns nothing of the routes.
    ("GET", "/v1/nope", None),
]


@pytest.fixture(scope="module")
async def mesh(redis_server: RedisServer) -> AsyncIterator[InProcessMesh]:
    settings = gateway_settings(
        redis_server.url,
        tenants={
            "acme": {"api_key_sha256": [hash_api_key("acme-key")]},
            "globex": {"api_key_sha256": [hash_api_key("globex-key")]},
        },
    )
    async with running_gateway(settings) as running:
        yield running


@pytest.mark.parametrize(
    "authorization", [None, "Bearer wrong-key", "Basic YWNtZTprZXk=", "Bearer", "acme-key"], ids=str
)
async def test_every_endpoint_refuses_a_missing_or_wrong_key(mesh: InProcessMesh, authorization: str | None) -> None:
    headers = {"authorization": authorization} if authorization else {}
    async with httpx.AsyncClient(base_url=mesh.http_url, headers=headers) as client:
        for method, path, body in ENDPOINTS:
            response = await client.request(method, path, json=body)
            assert response.status_code == 401, (method, path)
            error = response.json()["error"]
            assert error["type"] == "authentication_error" and error["code"] == "unauthenticated"
            assert response.headers["www-authenticate"] == "Bearer"
            assert response.headers["x-request-id"]
    ws_headers = {"authorization": authorization} if authorization else None
    with pytest.raises(websockets.InvalidStatus) as caught:
        async with connect(f"ws{mesh.http_url.removeprefix('http')}/v1/realtime/chat", additional_headers=ws_headers):
            pass
    assert caught.value.response.status_code == 401


async def test_a_valid_key_is_served_as_its_tenant_and_health_needs_none(mesh: InProcessMesh) -> None:
    async with httpx.AsyncClient(base_url=mesh.http_url) as client:
        health = await client.get("/healthz")
        assert health.status_code == 200 and health.json() == {"status": "serving"}
        metrics = await client.get("/metrics", headers={"authorization": "Bearer acme-key"})
        assert metrics.status_code == 200 and "headrace_http_requests_total" in metrics.text

    question: list[ChatCompletionMessageParam] = [{"role": "user", "content": f"same question {uuid.uuid4().hex}"}]

    async def cache_outcome(key: str) -> str:
        async with openai.AsyncOpenAI(base_url=f"{mesh.http_url}/v1", api_key=key, max_retries=0) as client:
            raw = await client.chat.completions.with_raw_response.create(
                model="smollm2", messages=question, max_tokens=3, temperature=0
            )
        return raw.headers["x-headrace-cache"]

    assert await cache_outcome("acme-key") == "miss"
    # The answer is stored after it is sent: on a loaded machine that can
    # take longer than a fixed pause.
    outcome = "miss"
    for _ in range(20):
        await asyncio.sleep(0.3)
        outcome = await cache_outcome("acme-key")
        if outcome != "miss":
            break
    assert outcome == "hit-exact"
    # Tenants never share answers: the key decides the tenant.
    assert await cache_outcome("globex-key") == "miss"


async def test_the_openai_client_reports_a_wrong_key(mesh: InProcessMesh) -> None:
    async with openai.AsyncOpenAI(base_url=f"{mesh.http_url}/v1", api_key="nope", max_retries=0) as client:
        with pytest.raises(openai.AuthenticationError) as caught:
            await client.models.list()
    assert caught.value.status_code == 401 and "unknown API key" in caught.value.message


async def test_metrics_may_be_opened_to_a_scraper(redis_server: RedisServer) -> None:
    settings = gateway_settings(
        redis_server.url,
        tenants={"acme": {"api_key_sha256": [hash_api_key("acme-key")]}},
        gateway={"open_metrics": True},
    )
    async with running_gateway(settings) as mesh, httpx.AsyncClient(base_url=mesh.http_url) as client:
        assert (await client.get("/metrics")).status_code == 200
        assert (await client.get("/v1/models")).status_code == 401
