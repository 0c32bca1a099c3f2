"""Engine settings: one discriminated union over every kind, the defaults
`headrace up --engine KIND` uses, and how vllm settings reach vLLM."""

from __future__ import annotations

import os

import pytest
from pydantic import TypeAdapter, ValidationError

from headrace.runtime.config import Settings
from headrace.runtime.engine_settings import (
    ENGINE_DEFAULTS,
    ENGINE_TASKS,
    EmbeddingsEngineSettings,
    EngineSettings,
    SyntheticEngineSettings,
    VllmEngineSettings,
)
from services.worker.engines import build_engine
from services.worker.engines.vllm_engine import cpu_list, engine_args, engine_environment

ADAPTER: TypeAdapter[EngineSettings] = TypeAdapter(EngineSettings)


@pytest.mark.parametrize(
    ("block", "cls"),
    [
        ({"kind": "synthetic"}, SyntheticEngineSettings),
        ({"kind": "vllm", "max_num_seqs": 8}, VllmEngineSettings),
        ({"kind": "embeddings", "max_batch_size": 16}, EmbeddingsEngineSettings),
    ],
)
def test_the_kind_picks_the_settings_class(block: dict[str, object], cls: type) -> None:
    assert type(ADAPTER.validate_python(block)) is cls


def test_fields_of_another_kind_are_refused() -> None:
    with pytest.raises(ValidationError, match="max_batch_size"):
        ADAPTER.validate_python({"kind": "vllm", "max_batch_size": 16})
    with pytest.raises(ValidationError):
        ADAPTER.validate_python({"kind": "nonesuch"})


def test_every_kind_has_defaults_for_headrace_up() -> None:
    assert set(ENGINE_DEFAULTS) == {"synthetic", "vllm", "embeddings", "triton", "openai"}
    for kind, cls in ENGINE_DEFAULTS.items():
        assert cls().kind == kind  # type: ignore[attr-defined]


def test_a_pool_runs_vllm_from_config_and_engine_override() -> None:
    settings = Settings(
        pools={"smollm2": {"engine": {"kind": "vllm", "max_num_seqs": 8}}, "minilm": {"engine": {"kind": "embeddings"}}}
    )
    engine = settings.pool_engine("smollm2")
    assert isinstance(engine, VllmEngineSettings) and engine.max_num_seqs == 8
    # --engine replaces the engine of every pool whose models it can serve.
    quick = Settings(engine_override="synthetic")
    assert isinstance(quick.pool_engine("smollm2"), SyntheticEngineSettings)
    assert isinstance(quick.pool_engine("minilm"), SyntheticEngineSettings)
    embed_only = Settings(engine_override="openai")
    assert embed_only.pool_engine("smollm2").kind == "openai"
    assert isinstance(embed_only.pool_engine("minilm"), EmbeddingsEngineSettings)
    with pytest.raises(ValidationError, match="unknown engine"):
        Settings(engine_override="nonesuch")


def test_models_dir_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: os.PathLike[str]) -> None:
    monkeypatch.setenv("HEADRACE_MODELS_DIR", str(tmp_path))
    assert str(Settings().models_dir) == str(tmp_path)
    monkeypatch.delenv("HEADRACE_MODELS_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", "/somewhere")
    assert str(Settings().models_dir) == "/somewhere/headrace/models"


def test_build_engine_returns_each_kind_without_loading_it() -> None:
    assert build_engine(SyntheticEngineSettings()).kind == "synthetic"
    assert build_engine(VllmEngineSettings()).kind == "vllm"
    assert build_engine(EmbeddingsEngineSettings()).kind == "embeddings"


def test_vllm_settings_become_engine_args() -> None:
    settings = VllmEngineSettings(
        model="/models/x", max_model_len=2048, max_num_seqs=8, tensor_parallel_size=2, gpu_memory_utilization=0.5
    )
    args = engine_args(settings, "/models/x")
    assert args["model"] == "/models/x"
    assert args["max_model_len"] == 2048 and args["max_num_seqs"] == 8
    assert args["enable_prefix_caching"] is True
    assert args["scheduling_policy"] == "priority"
    assert args["tensor_parallel_size"] == 2 and args["gpu_memory_utilization"] == 0.5
    assert "max_num_batched_tokens" not in args
    assert engine_args(VllmEngineSettings(scheduling_policy="fcfs"), "m")["scheduling_policy"] == "fcfs"


def test_vllm_cpu_settings_become_environment() -> None:
    env = engine_environment(VllmEngineSettings(cpu_kv_cache_gib=3, cpu_threads_bind="0-3"))
    assert env == {"VLLM_CPU_KVCACHE_SPACE": "3", "VLLM_CPU_OMP_THREADS_BIND": "0-3", "VLLM_USE_AOT_COMPILE": "0"}
    every_core = engine_environment(VllmEngineSettings())["VLLM_CPU_OMP_THREADS_BIND"]
    assert every_core == cpu_list(sorted(os.sched_getaffinity(0)))


@pytest.mark.parametrize(
    ("cpus", "text"), [([0], "0"), ([0, 1], "0-1"), ([0, 1, 2, 5], "0-2,5"), ([1, 3, 4, 5, 7], "1,3-5,7")]
)
def test_cpu_list(cpus: list[int], text: str) -> None:
    assert cpu_list(cpus) == text


@pytest.mark.parametrize(
    "block",
    [
        {"kind": "vllm", "max_num_seqs": 0},
        {"kind": "vllm", "gpu_memory_utilization": 1.5},
        {"kind": "vllm", "cpu_kv_cache_gib": 0},
        {"kind": "vllm", "dtype": "int3"},
        {"kind": "embeddings", "max_queue_delay_ms": -1},
        {"kind": "embeddings", "max_queue_size": 0},
    ],
)
def test_out_of_range_values_are_refused(block: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        ADAPTER.validate_python(block)


def test_every_engine_kind_has_tasks_and_defaults_named_by_its_own_kind() -> None:
    # ENGINE_TASKS and ENGINE_DEFAULTS are two tables keyed by kind: a kind
    # added to one and not the other would break `headrace up --engine`.
    assert set(ENGINE_TASKS) == set(ENGINE_DEFAULTS)
    for kind, settings_type in ENGINE_DEFAULTS.items():
        assert settings_type().model_dump()["kind"] == kind
        assert ENGINE_TASKS[kind] <= {"generate", "embed"} and ENGINE_TASKS[kind]
