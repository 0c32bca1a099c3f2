"""SSE as it leaves the gateway, read with a raw socket: each delta goes
out as soon as the worker produced it, a client that hangs up cancels the
generation in the engine, and a reader that stops reading is cut off with
a clear final event (the engine freed). Engine-side effects are checked on
the engine itself (its running count), not by the client's view."""

from __future__ import annotations

import itertools
import json
import statistics
import uuid
from typing import Any

from headrace.local.redis_server import RedisServer
from tests.integration.router.gateway.conftest import eventually, gateway_settings, running_gateway
from tests.support.mesh import InProcessMesh
from tests.support.raw_http import RawHttpResponse

CHAT_PATH = "/v1/chat/completions"


def chat_body(max_tokens: int, *, stream: bool = True) -> dict[str, Any]:
    return {
        "model": "smollm2",
        "messages": [{"role": "user", "content": f"tell me {uuid.uuid4().hex}"}],
        "max_tokens": max_tokens,
        "stream": stream,
    }


def running_count(mesh: InProcessMesh) -> int:
    return mesh.workers[0].app.engine.stats().running


async def test_each_delta_leaves_as_soon_as_the_worker_produced_it(redis_server: RedisServer) -> None:
    pace_s = 0.1  # the engine's known pace: 10 tokens/s
    tokens = 8
    settings = gateway_settings(
        redis_server.url, pools={"smollm2": {"engine": {"kind": "synthetic", "ttft_ms": 10, "tokens_per_s": 10}}}
    )
    async with running_gateway(settings) as mesh:
        response = await RawHttpResponse.post(mesh.http_url, CHAT_PATH, chat_body(tokens))
        assert response.status == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        arrivals: list[float] = []
        still_generating: list[bool] = []
        last = ""
        async for event in response.events():
            last = event.data
            if event.data == "[DONE]":
                break
            arrivals.append(event.at)
            # Read as it arrives: was the engine still at work on this answer?
            still_generating.append(running_count(mesh) == 1)
        await response.close()
    assert last == "[DONE]" and len(arrivals) == tokens
    # A buffering gateway would hold the deltas until the engine finished;
    # here every delta but the last reached the client while it still ran.
    assert all(still_generating[:-1])
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    # The deltas arrive spread out at the engine's pace, not in a burst.
    assert statistics.median(gaps) > pace_s / 2
    assert arrivals[-1] - arrivals[0] > (tokens - 1) * pace_s / 2


async def test_a_client_that_hangs_up_cancels_the_generation(redis_server: RedisServer) -> None:
    settings = gateway_settings(
        redis_server.url, pools={"smollm2": {"engine": {"kind": "synthetic", "ttft_ms": 5, "tokens_per_s": 20}}}
    )
    async with running_gateway(settings) as mesh:
        # Streamed: hang up after the first delta.
        response = await RawHttpResponse.post(mesh.http_url, CHAT_PATH, chat_body(500))
        async for _event in response.events():
            break
        assert running_count(mesh) == 1
        response.hang_up()
        assert await eventually(lambda: running_count(mesh) == 0)
        assert await eventually(lambda: len(mesh.dispatcher.leases) == 0)

        # Whole answer: hang up while the engine works on it.
        response = await RawHttpResponse.send(mesh.http_url, CHAT_PATH, chat_body(500, stream=False))
        assert await eventually(lambda: running_count(mesh) == 1)
        response.hang_up()
        assert await eventually(lambda: running_count(mesh) == 0)
        assert await eventually(lambda: len(mesh.dispatcher.leases) == 0)


async def test_a_reader_that_stops_reading_is_cut_off_and_the_engine_freed(redis_server: RedisServer) -> None:
    settings = gateway_settings(
        redis_server.url,
        pools={"smollm2": {"engine": {"kind": "synthetic", "ttft_ms": 1, "tokens_per_s": 50_000}}},
        limits={"max_tokens": 1_000_000},
        gateway={"stall_timeout_s": 0.5, "stream_buffer": 4},
    )
    async with running_gateway(settings) as mesh:
        # Small buffers on the client's side, so not reading pushes back soon.
        response = await RawHttpResponse.post(mesh.http_url, CHAT_PATH, chat_body(1_000_000), receive_buffer=4096)
        events = response.events()
        await anext(events)
        assert running_count(mesh) == 1
        # Now read nothing: the stream stalls, and is cut off after 0.5 s.
        assert await eventually(lambda: running_count(mesh) == 0, timeout_s=20.0)
        received = [event.data async for event in events]
        await response.close()
    final = received[-1]
    assert final != "[DONE]" and len(received) < 1_000_000
    error = json.loads(final)["error"]
    assert error["code"] == "slow_reader" and "took nothing for 0.5 s" in error["message"]
