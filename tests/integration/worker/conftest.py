"""Real engines shared by the worker's integration tests: one vLLM engine
per test session (it takes 30-90 s to start on a CPU)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest_asyncio

from headrace.models.store import default_models_dir, prepare_model
from headrace.runtime.engine_settings import VllmEngineSettings
from services.worker.engines.vllm_engine import VllmEngine

# Small on purpose: the priority test fills every slot, and this machine is shared.
SETTINGS = VllmEngineSettings(max_model_len=2048, max_num_seqs=8, cpu_kv_cache_gib=1)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def vllm_engine() -> AsyncIterator[VllmEngine]:
    """One engine for the session (it takes 30-90 s to start on a CPU)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # The developer's models directory: built once, later runs only re-check checksums.
    models_dir = default_models_dir()
    prepare_model("smollm2", models_dir, progress=False)
    engine = VllmEngine(SETTINGS, models_dir=models_dir)
    await engine.start()
    yield engine
    await engine.close()
