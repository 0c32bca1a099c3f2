"""Meshes for routing tests: pools of synthetic engines (fast, slow,
failing, pricey) bound to model versions, with a routing section."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import grpc.aio

from headrace.runtime.config import Settings
from headrace.v1 import generation_pb2, models_pb2
from tests.support.mesh import InProcessMesh


def synthetic(**engine: Any) -> dict[str, Any]:
    # Fast by default: these tests are about routing, not engines.
    return {"kind": "synthetic", "ttft_ms": 2, "tokens_per_s": 5000, **engine}


def routing_settings(redis_url: str, **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "redis_url": redis_url,
        "router": {"metrics_port": None},
        "cache": {"metrics_port": None, "enabled": False},
        "scheduler": {"metrics_port": None},
        "worker": {"metrics_port_offset": None},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return Settings(**base)


def ask(
    model: str, *, user: str = "", prompt: str = "What is 2 + 2?", max_tokens: int = 2
) -> generation_pb2.GenerateRequest:
    return generation_pb2.GenerateRequest(
        model=model,
        prompt=prompt,
        user=user,
        sampling=generation_pb2.SamplingParams(temperature=0.0, max_tokens=max_tokens),
        cache=generation_pb2.CachePolicy(no_cache=True, no_store=True),
    )


async def generate_all(
    mesh: InProcessMesh, requests: Sequence[generation_pb2.GenerateRequest], *, concurrency: int = 8
) -> list[generation_pb2.GenerateResponse | grpc.aio.AioRpcError]:
    """Answers (or the errors) of requests, `concurrency` at a time."""
    stub = mesh.router_stub()
    slots = asyncio.Semaphore(concurrency)

    async def one(request: generation_pb2.GenerateRequest) -> generation_pb2.GenerateResponse | grpc.aio.AioRpcError:
        async with slots:
            try:
                response: generation_pb2.GenerateResponse = await stub.Generate(request)
                return response
            except grpc.aio.AioRpcError as exc:
                return exc

    return list(await asyncio.gather(*(one(r) for r in requests)))


async def model_info(mesh: InProcessMesh, model_id: str) -> models_pb2.ModelInfo:
    listing: models_pb2.ListModelsResponse = await mesh.router_stub().ListModels(
        models_pb2.ListModelsRequest(include_deprecated=True)
    )
    for info in listing.models:
        if info.id == model_id:
            return info
    raise AssertionError(f"{model_id} not in ListModels: {[m.id for m in listing.models]}")
