"""Engines behind one protocol (base.Engine). build_engine picks the
implementation for a pool's engine settings; heavy engines (vLLM, torch)
are imported only when a pool uses them."""

from __future__ import annotations

from pathlib import Path

from headrace.runtime.engine_settings import (
    EmbeddingsEngineSettings,
    EngineSettings,
    SyntheticEngineSettings,
    VllmEngineSettings,
)
from services.worker.engines.base import Engine


def build_engine(settings: EngineSettings, *, models_dir: Path | None = None) -> Engine:
    """The engine for a pool. models_dir: where prepared models live
    (Settings.models_dir); None: the default directory."""
    if isinstance(settings, SyntheticEngineSettings):
        from services.worker.engines.synthetic import SyntheticEngine

        return SyntheticEngine(settings)
    if isinstance(settings, VllmEngineSettings):
        from services.worker.engines.vllm_engine import VllmEngine

        return VllmEngine(settings, models_dir=models_dir)
    if isinstance(settings, EmbeddingsEngineSettings):
        from services.worker.engines.embeddings import EmbeddingsEngine

        return EmbeddingsEngine(settings)
    raise ValueError(f"no engine for settings of kind {settings.kind!r}")
