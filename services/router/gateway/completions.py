"""POST /v1/chat/completions and POST /v1/completions: OpenAI's chat and
(legacy) text completions, whole or streamed. One route factory: the two
differ only in their request model and the converters on either side."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from fastapi import APIRouter
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from headrace.runtime.config import LimitSettings
from headrace.v1 import generation_pb2
from services.router.gateway import convert
from services.router.gateway.answers import Chunker, answer_generation
from services.router.gateway.body import read_model
from services.router.gateway.cache_control import HEADER as CACHE_CONTROL
from services.router.gateway.cache_control import cache_policy_from_header
from services.router.gateway.dependencies import GatewayServices
from services.router.gateway.protocol import ChatCompletionRequest, CompletionRequest

R = TypeVar("R", ChatCompletionRequest, CompletionRequest)


@dataclass(frozen=True)
class CompletionApi(Generic[R]):
    path: str
    request: type[R]
    to_proto: Callable[[R, generation_pb2.CachePolicy, LimitSettings], generation_pb2.GenerateRequest]
    # (response, created) -> the whole answer.
    whole: Callable[[generation_pb2.GenerateResponse, int], BaseModel]
    # (request id, created, include_usage) -> the stream's converter.
    chunker: Callable[[str, int, bool], Chunker]


CHAT = CompletionApi(
    path="/v1/chat/completions",
    request=ChatCompletionRequest,
    to_proto=convert.chat_request,
    whole=lambda response, created: convert.chat_completion(response, created=created),
    chunker=lambda request_id, created, usage: convert.ChatChunks(
        request_id=request_id, created=created, include_usage=usage
    ),
)
TEXT = CompletionApi(
    path="/v1/completions",
    request=CompletionRequest,
    to_proto=convert.completion_request,
    whole=lambda response, created: convert.text_completion(response, created=created),
    chunker=lambda request_id, created, usage: convert.CompletionChunks(
        request_id=request_id, created=created, include_usage=usage
    ),
)


def completion_router(services: GatewayServices, api: CompletionApi[R]) -> APIRouter:
    router = APIRouter()

    async def create(request: Request) -> Response:
        body = await read_model(request, api.request, max_bytes=services.settings.gateway.max_body_bytes)
        cache = cache_policy_from_header(request.headers.get(CACHE_CONTROL))
        proto = api.to_proto(body, cache, services.settings.limits)
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        return await answer_generation(
            request,
            services,
            proto,
            stream=body.stream,
            whole=api.whole,
            chunker=lambda request_id, created: api.chunker(request_id, created, include_usage),
        )

    router.add_api_route(api.path, create, methods=["POST"])
    return router


def completions_routers(services: GatewayServices) -> list[APIRouter]:
    return [completion_router(services, CHAT), completion_router(services, TEXT)]
