"""Reloading the registry without a restart, over the real mesh: clients
that never name a version move to the new default without an error; a
bad config is refused and the running one stays; only admins may reload."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
import yaml

from headrace.local.redis_server import RedisServer
from headrace.runtime.config import Settings, hash_api_key
from headrace.v1 import models_pb2
from tests.support.mesh import InProcessMesh, start_mesh
from tests.support.routing import ask, model_info, routing_settings, synthetic


def registry(default_version: str, **extra: Any) -> dict[str, Any]:
    return {
        "pools": {"gen": {"engine": synthetic()}},
        "models": {
            "rl": {"default_version": default_version, "versions": {"1": {"pool": "gen"}, "2": {"pool": "gen"}}}
        },
        "aliases": {"chat": "rl"},
        "default_model": "rl",
        **extra,
    }


def write(path: Path, content: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(content))


async def start(redis_url: str, path: Path, monkeypatch: pytest.MonkeyPatch, **extra: Any) -> InProcessMesh:
    write(path, registry("1", **extra))
    # The router re-reads the file HEADRACE_CONFIG names.
    monkeypatch.setenv("HEADRACE_CONFIG", str(path))
    settings: Settings = routing_settings(redis_url, **registry("1", **extra))
    return await start_mesh(settings)


async def test_clients_without_a_version_move_to_the_new_default_without_an_error(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "headrace.yaml"
    mesh = await start(redis_server.url, path, monkeypatch)
    stub = mesh.router_stub()
    served: list[str] = []
    stop = asyncio.Event()

    async def client(model: str) -> None:
        while not stop.is_set():
            answer = await stub.Generate(ask(model))
            served.append(answer.model)

    try:
        clients = [asyncio.create_task(client(m)) for m in ("rl", "chat", "")]
        await asyncio.sleep(0.2)
        await asyncio.to_thread(write, path, registry("2"))
        reloaded = await stub.ReloadConfig(models_pb2.ReloadConfigRequest())
        assert reloaded.changed and list(reloaded.changes) == ["models.rl"] and len(reloaded.config_sha256) == 64
        await asyncio.sleep(0.2)
        stop.set()
        await asyncio.gather(*clients)  # any error in a client fails the test here
        assert served[0] == "rl@1" and served[-1] == "rl@2"
        # Once switched, a client never goes back.
        switch = served.index("rl@2")
        assert "rl@1" not in served[switch + 3 :]
        assert (await model_info(mesh, "chat")).resolves_to == "rl@2"
        assert (await model_info(mesh, "rl@1")).resolves_to == "rl@1", "pinned versions stay callable"
        again = await stub.ReloadConfig(models_pb2.ReloadConfigRequest())
        assert not again.changed and again.config_sha256 == reloaded.config_sha256
    finally:
        stop.set()
        await mesh.close()


async def test_a_bad_config_is_refused_naming_the_field_and_the_old_one_serves(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "headrace.yaml"
    mesh = await start(redis_server.url, path, monkeypatch)
    stub = mesh.router_stub()
    try:
        bad = registry("1", aliases={"chat": "ghost"})
        await asyncio.to_thread(write, path, bad)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ReloadConfig(models_pb2.ReloadConfigRequest())
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "alias 'chat' points at unknown model 'ghost'" in (caught.value.details() or "")
        assert (await stub.Generate(ask("chat"))).model == "rl@1"
        assert (await model_info(mesh, "chat")).resolves_to == "rl@1"
        # A routing section that is wrong is refused the same way.
        await asyncio.to_thread(write, path, registry("1", routing={"canaries": {"rl": {"version": "3"}}}))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ReloadConfig(models_pb2.ReloadConfigRequest())
        assert "routing.canaries.rl: model has no served version '3'" in (caught.value.details() or "")
    finally:
        await mesh.close()


async def test_a_reload_can_add_a_route(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "headrace.yaml"
    mesh = await start(redis_server.url, path, monkeypatch)
    stub = mesh.router_stub()
    try:
        assert (await stub.Generate(ask("chat", user="u1"))).route.reason == "alias:chat"
        route = {"policies": [{"kind": "ab", "arms": [{"name": "v2", "target": "rl@2", "weight": 1}]}]}
        await asyncio.to_thread(write, path, registry("1", routing={"routes": {"chat": route}}))
        await stub.ReloadConfig(models_pb2.ReloadConfigRequest())
        answer = await stub.Generate(ask("chat", user="u1"))
        assert (answer.model, answer.route.reason) == ("rl@2", "alias:chat,ab:chat/v2")
        assert list((await model_info(mesh, "chat")).policies) == ["ab:chat"]
    finally:
        await mesh.close()


async def test_only_admin_tenants_may_reload(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "headrace.yaml"
    mesh = await start(
        redis_server.url,
        path,
        monkeypatch,
        tenants={
            "ops": {"api_key_sha256": [hash_api_key("ops-key")]},
            "acme": {"api_key_sha256": [hash_api_key("acme-key")]},
        },
        routing={"admin_tenants": ["ops"]},
    )
    stub = mesh.router_stub()
    try:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ReloadConfig(models_pb2.ReloadConfigRequest(), metadata=(("authorization", "Bearer acme-key"),))
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "routing.admin_tenants" in (caught.value.details() or "")
        reply = await stub.ReloadConfig(
            models_pb2.ReloadConfigRequest(), metadata=(("authorization", "Bearer ops-key"),)
        )
        assert not reply.changed
    finally:
        await mesh.close()
