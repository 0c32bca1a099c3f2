"""POST /v1/chat/completions: OpenAI's chat completions, whole or streamed."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from services.router.gateway import convert
from services.router.gateway.answers import answer_generation
from services.router.gateway.body import read_model
from services.router.gateway.cache_control import HEADER as CACHE_CONTROL
from services.router.gateway.cache_control import cache_policy_from_header
from services.router.gateway.dependencies import GatewayServices
from services.router.gateway.protocol import ChatCompletionRequest


def chat_completions_router(services: GatewayServices) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/chat/completions")
    async def create_chat_completion(request: Request) -> Response:
        body = await read_model(request, ChatCompletionRequest, max_bytes=services.settings.gateway.max_body_bytes)
        cache = cache_policy_from_header(request.headers.get(CACHE_CONTROL))
        proto = convert.chat_request(body, cache, services.settings.limits)
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        return await answer_generation(
            request,
            services,
            proto,
            stream=body.stream,
            whole=lambda response, created: convert.chat_completion(response, created=created),
            chunker=lambda request_id, created: convert.ChatChunks(
                request_id=request_id, created=created, include_usage=include_usage
            ),
        )

    return router
