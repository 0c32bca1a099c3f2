"""Engines behind one protocol (base.Engine). build_engine picks the
implementation for a pool's engine settings; heavy engines are imported
only when a pool uses them."""

from __future__ import annotations

from headrace.runtime.engine_settings import EngineSettings, SyntheticEngineSettings
from services.worker.engines.base import Engine


def build_engine(settings: EngineSettings) -> Engine:
    if isinstance(settings, SyntheticEngineSettings):
        from services.worker.engines.synthetic import SyntheticEngine

        return SyntheticEngine(settings)
    raise ValueError(f"no engine for settings of kind {settings.kind!r}")
