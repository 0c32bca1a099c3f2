"""The fixed-response OpenAI backend of `make bench-peers`: a tiny
starlette app on 127.0.0.1 that answers every chat completion with the
same text at once (no model, no waiting), streamed or whole, with usage.
Whatever sits in front of it, the time and CPU beyond this backend's own
are that proxy's.

    python -m bench.peers_backend --port 8101

It counts what it was asked (GET /stats), so a test can tell a streamed
call from a unary one and see how often its model list was read.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

MODEL = "fixed"
# The answer, as the chunks a streaming upstream sends it in.
CHUNKS = ("Hello", " from", " the", " fixed", " backend", ".")
TEXT = "".join(CHUNKS)
PROMPT_TOKENS = 8


def _usage() -> dict[str, int]:
    return {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": len(CHUNKS),
        "total_tokens": PROMPT_TOKENS + len(CHUNKS),
    }


def _chunk(delta: dict[str, str], finish: str | None = None, usage: bool = False) -> bytes:
    body: dict[str, Any] = {
        "id": "chatcmpl-fixed",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": MODEL,
        "choices": [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    if usage:
        body["usage"] = _usage()
    return b"data: " + json.dumps(body).encode() + b"\n\n"


# Pre-encoded: the backend's own cost per request stays as small as it can.
_STREAM = (
    _chunk({"role": "assistant", "content": ""})
    + b"".join(_chunk({"content": text}) for text in CHUNKS)
    + _chunk({}, "stop")
)
_STREAM_USAGE = _chunk({}, usage=True)
_WHOLE = json.dumps(
    {
        "id": "chatcmpl-fixed",
        "object": "chat.completion",
        "created": 0,
        "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": TEXT}, "finish_reason": "stop"}],
        "usage": _usage(),
    }
).encode()
_MODELS = {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "bench"}]}


def build_app() -> Starlette:
    asked: Counter[str] = Counter()

    async def models(request: Request) -> Response:
        asked["models"] += 1
        return JSONResponse(_MODELS)

    async def chat(request: Request) -> Response:
        body = json.loads(await request.body())
        if not body.get("stream"):
            asked["unary"] += 1
            return Response(_WHOLE, media_type="application/json")
        asked["streamed"] += 1
        with_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        async def events() -> AsyncIterator[bytes]:
            yield _STREAM + (_STREAM_USAGE if with_usage else b"") + b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def stats(request: Request) -> Response:
        return JSONResponse(dict(asked))

    return Starlette(
        routes=[
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/stats", stats, methods=["GET"]),
        ]
    )


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(build_app(), host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
