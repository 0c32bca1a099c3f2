"""GET /v1/models and /v1/models/{id}: what can be called, from the model
registry (aliases, model names and pinned versions), in OpenAI's shape
with Headrace's details under `headrace`."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from headrace.models.registry import RegistryEntry
from headrace.runtime.errors import NotFound
from services.router.gateway.answers import json_response
from services.router.gateway.dependencies import GatewayServices
from services.router.gateway.protocol import ModelCard, ModelDetails, ModelList


def _card(entry: RegistryEntry) -> ModelCard:
    return ModelCard(
        id=entry.id,
        created=entry.created_at,
        headrace=ModelDetails(
            resolves_to=entry.resolution.model_version,
            alias=entry.alias,
            task=entry.task,
            pool=entry.resolution.pool,
            engine=entry.resolution.engine,
            deprecated=entry.deprecated,
            replaced_by=entry.replaced_by,
            context_length=entry.context_length,
        ),
    )


def models_router(services: GatewayServices) -> APIRouter:
    router = APIRouter()

    @router.get("/v1/models")
    async def list_models() -> Response:
        entries = services.registry.entries(include_deprecated=True)
        return json_response(ModelList(data=[_card(entry) for entry in entries]), ())

    # `:path`: a model id may hold a slash ("org/model").
    @router.get("/v1/models/{model_id:path}")
    async def retrieve_model(model_id: str) -> Response:
        for entry in services.registry.entries(include_deprecated=True):
            if entry.id == model_id:
                return json_response(_card(entry), ())
        raise NotFound(f"model {model_id!r} does not exist; available: {', '.join(services.registry.names())}")

    return router
