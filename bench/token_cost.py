"""make bench-token-cost: the mesh's CPU per streamed token, by process,
next to this machine's floor for one gRPC stream message (bench/machine_floor.py).

A synthetic engine (no model: its tokens cost the engine nothing) streams
through the HTTP gateway as `vllm bench serve` asks: /v1/completions,
`stream: true`, 8 streams at once (as at its concurrency 8), each one
token per delta, 128 tokens a request (ignore_eos), the cache bypassed.
CPU of each mesh process over the phase, per token the client received.

Each stream is paced on its own clock (vLLM emits every sequence's token
in one engine step, so its messages can share wakes): at a slow pace this
is an upper bound for a real engine's.

A token through the mesh is one gRPC message (worker to router) and one
SSE event (router to client); plain `vllm serve` has the SSE event only.
On a CPU host that message's cost comes out of the engine's cores: this
is the share of the mesh in `vllm bench serve`'s TPOT through the gateway.

    python -m bench.token_cost [--seconds 20] [--tokens-per-s 100]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import httpx

from bench import machine_floor
from bench.harness import markdown_table, process_group_cpu_s, running_mesh, write_results

STREAMS = 8
TOKENS = 128


def mesh_config(tokens_per_s: float) -> dict[str, Any]:
    return {
        "pools": {
            "smollm2": {
                "engine": {"kind": "synthetic", "ttft_ms": 0, "tokens_per_s": tokens_per_s, "max_concurrency": 64},
                "workers": 1,
            }
        },
        "models": {"smollm2": {"default_version": "1", "versions": {"1": {"pool": "smollm2"}}}},
        "default_embedding_model": "",
        "cache": {"semantic": {"enabled": False}},
    }


async def stream_tokens(base_url: str, seconds: float) -> tuple[int, int]:
    """(tokens, SSE events) received by STREAMS clients, each streaming
    completions one after another for `seconds`."""
    until = time.monotonic() + seconds
    counts = {"tokens": 0, "events": 0}

    async def one(client: httpx.AsyncClient, stream_index: int) -> None:
        request = 0
        while time.monotonic() < until:
            request += 1
            body = {
                "model": "smollm2",
                "prompt": f"stream {stream_index} request {request} at {time.time()}",
                "max_tokens": TOKENS,
                "ignore_eos": True,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            headers = {"Cache-Control": "no-store, no-cache"}
            async with client.stream("POST", f"{base_url}/v1/completions", json=body, headers=headers) as answer:
                if answer.status_code != 200:
                    raise RuntimeError(f"HTTP {answer.status_code}: {(await answer.aread())[:300]!r}")
                async for line in answer.aiter_lines():
                    if not line.startswith("data: {"):
                        continue
                    counts["events"] += 1
                    usage = json.loads(line[6:]).get("usage")
                    if usage:
                        counts["tokens"] += usage["completion_tokens"]

    async with httpx.AsyncClient(timeout=60) as client:
        await asyncio.gather(*(one(client, index) for index in range(STREAMS)))
    return counts["tokens"], counts["events"]


def run(seconds: float, tokens_per_s: float) -> None:
    floor = machine_floor.measure()
    print(floor.text(), flush=True)
    with running_mesh(mesh_config(tokens_per_s)) as mesh:
        asyncio.run(stream_tokens(mesh.http_url, 3.0))  # warm
        before = {p.name: process_group_cpu_s(p.pid) for p in mesh.processes}
        started = time.monotonic()
        tokens, events = asyncio.run(stream_tokens(mesh.http_url, seconds))
        wall = time.monotonic() - started
        after = {p.name: process_group_cpu_s(p.pid) for p in mesh.processes}
    if tokens == 0:
        raise SystemExit("no token streamed")
    per_token_us = {name: (after[name] - before[name]) / tokens * 1e6 for name in after}
    total = sum(per_token_us.values())
    rows = [[name, f"{us:.0f}"] for name, us in sorted(per_token_us.items(), key=lambda item: -item[1])]
    rows.append(["all mesh processes", f"{total:.0f}"])
    rows.append(["floor: one bare gRPC stream message, sender + receiver", f"{floor.stream_message_us:.0f}"])
    table = markdown_table(["process", "CPU us per streamed token"], rows)
    table += (
        f"\n\n{tokens} tokens in {events} SSE events over {wall:.0f} s ({tokens / wall:.0f} tokens/s), "
        f"{STREAMS} streams at once, each {tokens_per_s:.0f} tokens/s from a synthetic engine, {TOKENS} tokens "
        f"a request. The mesh's CPU per token is {total / floor.stream_message_us:.1f}x the floor of the one gRPC "
        "message a token costs between worker and router.\n\n" + floor.text()
    )
    results = {
        "seconds": seconds,
        "tokens_per_s_per_stream": tokens_per_s,
        "streams": STREAMS,
        "tokens": tokens,
        "events": events,
        "cpu_us_per_token": per_token_us,
        "machine_floor": floor.as_dict(),
    }
    write_results("token-cost", results, "## bench-token-cost\n\n" + table)


def main() -> None:
    parser = argparse.ArgumentParser(description="The mesh's CPU per streamed token, by process")
    parser.add_argument("--seconds", type=float, default=20.0)
    # vLLM on this CPU: ~20 tokens/s a sequence at concurrency 8; faster
    # here so that the phase holds enough tokens to count.
    parser.add_argument("--tokens-per-s", type=float, default=100.0)
    args = parser.parse_args()
    run(args.seconds, args.tokens_per_s)


if __name__ == "__main__":
    main()
