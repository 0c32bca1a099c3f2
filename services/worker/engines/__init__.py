"""Engines behind one protocol (base.Engine). build_engine picks the
implementation for a pool's engine settings; heavy engines are imported
only when a pool uses them."""

from __future__ import annotations

from headrace.runtime.engine_settings import (
    EngineSettings,
    OpenAIEngineSettings,
    SyntheticEngineSettings,
    TritonEngineSettings,
)
from services.worker.engines.base import Engine


def build_engine(settings: EngineSettings) -> Engine:
    if isinstance(settings, SyntheticEngineSettings):
        from services.worker.engines.synthetic import SyntheticEngine

        return SyntheticEngine(settings)
    if isinstance(settings, TritonEngineSettings):
        from services.worker.engines.triton import TritonEngine

        return TritonEngine(settings)
    if isinstance(settings, OpenAIEngineSettings):
        from services.worker.engines.openai_upstream import OpenAIEngine

        return OpenAIEngine(settings)
    raise ValueError(f"no engine for settings of kind {settings.kind!r}")
