"""Real engines, loaded once per test session (vLLM takes ~30-90 s to start
on a CPU). Models come from PyPI packages; nothing reaches a hub."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest_asyncio

from headrace.model_store import default_models_dir, prepare_model
from headrace.runtime.engine_settings import EmbeddingsEngineSettings, VllmEngineSettings
from services.worker.engines.embeddings import EmbeddingsEngine
from services.worker.engines.vllm_engine import VllmEngine

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Small on purpose: the priority test fills every slot, and this machine is shared.
VLLM_TEST_SETTINGS = VllmEngineSettings(max_model_len=2048, max_num_seqs=8, cpu_kv_cache_gib=1)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def vllm_engine() -> AsyncIterator[VllmEngine]:
    # The developer's models directory: prepared once, then a checksum pass.
    models_dir = default_models_dir()
    prepare_model("smollm2", models_dir, progress=False)
    engine = VllmEngine(VLLM_TEST_SETTINGS, models_dir=models_dir)
    await engine.start()
    yield engine
    await engine.close()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def embeddings_engine() -> AsyncIterator[EmbeddingsEngine]:
    engine = EmbeddingsEngine(EmbeddingsEngineSettings(max_batch_size=32, max_queue_delay_ms=20))
    await engine.start()
    yield engine
    await engine.close()
