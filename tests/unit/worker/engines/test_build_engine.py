"""Engine settings of the triton and openai kinds, as a pool's YAML block
gives them, and the engines build_engine makes of them."""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter, ValidationError

from headrace.runtime.engine_settings import (
    ENGINE_DEFAULTS,
    EngineSettings,
    OpenAIEngineSettings,
    TritonEngineSettings,
)
from services.worker.engines import build_engine
from services.worker.engines.base import Engine
from services.worker.engines.openai_upstream import OpenAIEngine
from services.worker.engines.triton import TritonEngine

ADAPTER: TypeAdapter[EngineSettings] = TypeAdapter(EngineSettings)


def test_kinds_are_chosen_by_the_kind_key() -> None:
    triton = ADAPTER.validate_python({"kind": "triton", "url": "triton:8001", "model_name": "minilm"})
    assert isinstance(triton, TritonEngineSettings)
    assert (triton.url, triton.model_name, triton.model_version) == ("triton:8001", "minilm", "")
    upstream = ADAPTER.validate_python({"kind": "openai", "base_url": "https://api.example/v1", "api_key_env": "K"})
    assert isinstance(upstream, OpenAIEngineSettings)
    assert (upstream.api_key_env, upstream.model, upstream.stream) == ("K", "", True)


def test_an_api_key_cannot_be_written_in_the_config() -> None:
    with pytest.raises(ValidationError, match="api_key"):
        ADAPTER.validate_python({"kind": "openai", "api_key": "sk-secret"})


@pytest.mark.parametrize(
    "block",
    [
        {"kind": "triton", "max_concurrency": 0},
        {"kind": "triton", "start_timeout_s": 0},
        {"kind": "openai", "max_retries": -1},
        {"kind": "openai", "request_timeout_s": 0},
    ],
)
def test_out_of_range_values_are_refused(block: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        ADAPTER.validate_python(block)


@pytest.mark.parametrize(("kind", "engine_class"), [("triton", TritonEngine), ("openai", OpenAIEngine)])
def test_defaults_build_the_engine_of_their_kind(kind: str, engine_class: type) -> None:
    settings = ENGINE_DEFAULTS[kind]()
    engine = build_engine(settings)  # type: ignore[arg-type]
    assert isinstance(engine, engine_class)
    assert isinstance(engine, Engine)
    assert engine.kind == kind
