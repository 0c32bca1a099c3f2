from pathlib import Path
from typing import Any

import pytest

from headrace.models.registry import ModelRegistry
from headrace.runtime.config import Settings, hash_api_key


def test_embedded_default_is_a_whole_local_mesh() -> None:
    settings = Settings()
    assert settings.router.host == "127.0.0.1"
    assert (settings.router.port, settings.cache.port, settings.scheduler.port) == (50051, 50052, 50053)
    assert settings.worker.base_port == 50061
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.pool_models("smollm2") == ["smollm2@1"]
    assert not settings.auth_enabled


def test_yaml_then_environment_then_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "headrace.yaml"
    config.write_text("router:\n  port: 61000\n  http_port: 61001\ncache:\n  port: 61002\n")
    monkeypatch.setenv("HEADRACE_CONFIG", str(config))
    monkeypatch.setenv("HEADRACE_CACHE__PORT", "61003")
    settings = Settings()
    assert settings.router.port == 61000
    assert settings.cache.port == 61003
    assert Settings(router={"port": 61004}).router.port == 61004


def test_missing_config_file_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HEADRACE_CONFIG", str(tmp_path / "nope.yaml"))
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        Settings()


def test_open_dev_mode_refuses_non_loopback_binds() -> None:
    with pytest.raises(ValueError, match="refusing to bind '0.0.0.0'"):
        Settings(router={"host": "0.0.0.0"})


def test_with_api_keys_the_router_may_bind_any_address() -> None:
    settings = Settings(router={"host": "0.0.0.0"}, tenants={"acme": {"api_key_sha256": [hash_api_key("k")]}})
    assert settings.auth_enabled


@pytest.mark.parametrize("section", ["cache", "scheduler", "worker"])
def test_internal_services_leave_loopback_only_with_service_identity(section: str, tmp_path: Path) -> None:
    # API keys guard the router's door; they say nothing of who calls the cache.
    overrides: dict[str, Any] = {
        section: {"host": "0.0.0.0"},
        "tenants": {"acme": {"api_key_sha256": [hash_api_key("k")]}},
    }
    with pytest.raises(ValueError, match="refusing to bind '0.0.0.0': internal_tls.certs_dir is not set"):
        Settings(**overrides)
    settings = Settings(**overrides, internal_tls={"certs_dir": str(tmp_path)})
    assert settings.internal_tls.certs_dir == tmp_path


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"models": {"m": {"default_version": "1", "versions": {"1": {"pool": "nope"}}}}}, "names pool 'nope'"),
        ({"models": {"m": {"default_version": "2", "versions": {"1": {"pool": "smollm2"}}}}}, "default_version"),
        ({"aliases": {"chat": "ghost@1"}}, "unknown model"),
        ({"engine_override": "warp"}, "unknown engine"),
        ({"tenants": {"t": {"api_key_sha256": ["not-hex"]}}}, "64 lowercase hex"),
    ],
)
def test_inconsistent_config_is_rejected(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings(**overrides)


def test_engine_override_replaces_the_pool_engine() -> None:
    settings = Settings(engine_override="synthetic")
    assert settings.pool_engine("smollm2").kind == "synthetic"


def test_the_example_config_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    example = Path(__file__).parents[3] / "examples" / "headrace.yaml"
    monkeypatch.setenv("HEADRACE_CONFIG", str(example))
    settings = Settings()
    assert settings.pool_models("smollm2") == ["smollm2@1", "smollm2@2"]
    assert settings.auth_enabled
    assert settings.tenants["acme"].api_key_sha256 == [hash_api_key("test")]


def test_the_quantized_example_serves_int8_as_a_version_of_smollm2(monkeypatch: pytest.MonkeyPatch) -> None:
    example = Path(__file__).parents[3] / "examples" / "quantized.yaml"
    monkeypatch.setenv("HEADRACE_CONFIG", str(example))
    settings = Settings()
    registry = ModelRegistry(settings)
    assert registry.resolve("smollm2", task="generate").model_version == "smollm2@1"
    by_version = registry.resolve("smollm2@q8", task="generate")
    assert (by_version.model_version, by_version.pool, by_version.reason) == ("smollm2@q8", "smollm2-q8", "pinned")
    by_alias = registry.resolve("smollm2-fast", task="generate")
    assert (by_alias.model_version, by_alias.reason) == ("smollm2@q8", "alias:smollm2-fast")
    engines = {pool: settings.pool_engine(pool) for pool in ("smollm2", "smollm2-q8")}
    assert {pool: getattr(e, "prepared_model", None) for pool, e in engines.items()} == {
        "smollm2": "smollm2",
        "smollm2-q8": "smollm2-w8a8",
    }
    (policy,) = settings.routing.routes["chat"].policies
    assert policy.kind == "fast_accurate" and (policy.fast, policy.accurate) == ("smollm2-fast", "smollm2@1")


def test_scheduling_is_set_per_pool_and_checked() -> None:
    settings = Settings(scheduler={"pools": {"smollm2": {"policy": "prefix_affinity", "queue_limit": 8}}})
    assert settings.scheduler.for_pool("smollm2").policy == "prefix_affinity"
    assert settings.scheduler.for_pool("other").policy == "least_outstanding_tokens"
    with pytest.raises(ValueError, match="scheduler.pools names pool 'nope'"):
        Settings(scheduler={"pools": {"nope": {}}})
    with pytest.raises(ValueError, match="policy"):
        Settings(scheduler={"pools": {"smollm2": {"policy": "random"}}})
    with pytest.raises(ValueError, match="kv_cache_soft_limit must be below"):
        Settings(scheduler={"pools": {"smollm2": {"kv_cache_soft_limit": 0.9, "kv_cache_hard_limit": 0.8}}})


def test_the_embedded_cpu_pool_puts_online_first_unless_told_otherwise() -> None:
    embedded = Settings().scheduler.for_pool("smollm2")
    assert embedded.online_preempts_batch and embedded.batch_share_while_online == 0.0625
    assert Settings().scheduler.for_pool("minilm").online_preempts_batch is False
    # Its own scheduling section, or pools of one's own, take the field defaults.
    told = Settings(scheduler={"pools": {"smollm2": {"policy": "prefix_affinity"}}}).scheduler.for_pool("smollm2")
    assert not told.online_preempts_batch and told.batch_share_while_online == 0.5
    own = Settings(pools={"smollm2": {"engine": {"kind": "synthetic"}}}).scheduler.for_pool("smollm2")
    assert not own.online_preempts_batch


def test_own_pools_without_models_keep_the_default_models_that_fit() -> None:
    only_generation = Settings(pools={"smollm2": {"engine": {"kind": "synthetic"}}})
    assert set(only_generation.models) == {"smollm2"}
    assert only_generation.default_model == "smollm2"
    assert only_generation.default_embedding_model == ""
    # Models named explicitly must still point at configured pools.
    with pytest.raises(ValueError, match="names pool 'minilm'"):
        Settings(
            pools={"smollm2": {"engine": {"kind": "synthetic"}}},
            models={"minilm": {"task": "embed", "default_version": "1", "versions": {"1": {"pool": "minilm"}}}},
        )


def test_scheduler_replicas_give_every_client_the_same_address_list() -> None:
    assert Settings(scheduler={"port": 50100, "replicas": 2}).scheduler.targets() == [  # type: ignore[arg-type]
        "127.0.0.1:50100",
        "127.0.0.1:50101",
    ]
    listed = Settings(scheduler={"addresses": ["10.0.0.1:50053", "10.0.0.2:50053"]})  # type: ignore[arg-type]
    assert listed.scheduler.targets() == ["10.0.0.1:50053", "10.0.0.2:50053"]
    with pytest.raises(ValueError, match="replicas is 3 but scheduler.addresses names 2"):
        Settings(scheduler={"replicas": 3, "addresses": ["a:1", "b:2"]})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not host:port"):
        Settings(scheduler={"addresses": ["nohost"]})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="each replica once"):
        Settings(scheduler={"addresses": ["a:1", "a:1"]})  # type: ignore[arg-type]


def test_a_worker_on_every_interface_must_say_how_others_reach_it() -> None:
    # Beyond loopback: API keys and service identity (the certificates are
    # only read when a service starts).
    secured: dict[str, object] = {
        "tenants": {"t": {"api_key_sha256": [hash_api_key("k")]}},
        "internal_tls": {"certs_dir": "/nonexistent/certs"},
    }
    # The shared config is fine (routers and schedulers read it too) ...
    wildcard = Settings(**secured, worker={"host": "0.0.0.0"})  # type: ignore[arg-type]
    # ... but the worker refuses to register by an address nobody can dial.
    with pytest.raises(ValueError, match="set worker.advertise_host"):
        wildcard.worker.reachable_host()
    settings = Settings(**secured, worker={"host": "0.0.0.0", "advertise_host": "10.1.2.3"})  # type: ignore[arg-type]
    assert settings.worker.reachable_host() == "10.1.2.3"
    assert Settings().worker.reachable_host() == "127.0.0.1"
