"""POST /v1/embeddings: OpenAI's embeddings (floats or base64)."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from headrace.request_rules.served_by import served_by_headers
from headrace.runtime.request_context import current_request_id, current_tenant
from services.router.gateway import convert
from services.router.gateway.answers import json_response, until_disconnected
from services.router.gateway.body import read_model
from services.router.gateway.dependencies import GatewayServices
from services.router.gateway.protocol import EmbeddingRequest


def embeddings_router(services: GatewayServices) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/embeddings")
    async def create_embeddings(request: Request) -> Response:
        body = await read_model(request, EmbeddingRequest, max_bytes=services.settings.gateway.max_body_bytes)
        proto = convert.embed_request(body, services.settings.limits)
        request_id = current_request_id()
        response = await until_disconnected(
            request, services.embedding.embed(proto, tenant=current_tenant(), request_id=request_id)
        )
        return json_response(
            convert.embedding_list(response, encoding_format=body.encoding_format),
            served_by_headers(request_id, response.route),
        )

    return router
