"""The synthetic engine: no model, a set time to first token and decode
speed. It exists to measure the mesh's own overhead and to inject faults
(failures before the first token, failures mid-stream, slowness). It never
stands in for a real model."""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
import time
from collections.abc import AsyncGenerator, Iterator, Sequence

from headrace.runtime.engine_settings import SyntheticEngineSettings
from headrace.runtime.errors import Internal, Unavailable
from services.worker.engines.base import Delta, EngineStats, FinishReason, GenerationRequest
from services.worker.engines.slots import Slots
from services.worker.engines.throughput import ThroughputMeter

_WORDS = (
    "the river turns a wheel and the mill grinds grain while water runs down the "
    "headrace past the sluice gate into the pond below the race"
).split()


class SyntheticEngine:
    kind = "synthetic"

    def __init__(self, settings: SyntheticEngineSettings) -> None:
        self._settings = settings
        self._slots = Slots(settings.max_concurrency)
        self._aborted: set[str] = set()
        # Requests holding a place or waiting for one: abort reaches both,
        # as vLLM's reaches waiting requests too.
        self._active: set[str] = set()
        self._random = random.Random(settings.seed)
        self._meter = ThroughputMeter()
        self._closed = False

    async def start(self) -> None:
        if self._settings.start_delay_s:
            await asyncio.sleep(self._settings.start_delay_s)

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[Delta, None]:
        settings = self._settings
        prompt_text = request.prompt if request.prompt is not None else " ".join(t.content for t in request.messages)
        prompt_tokens = max(1, len(prompt_text.split()))
        max_tokens = request.sampling.max_tokens or settings.default_max_tokens
        self._active.add(request.request_id)
        try:
            async with self._slots.at(request.priority):
                if request.request_id in self._aborted:
                    # Aborted while it waited: it leaves without running.
                    yield Delta("", (), FinishReason.ABORT, prompt_tokens, 0)
                    return
                await asyncio.sleep(settings.ttft_ms * settings.slowdown / 1000.0)
                if settings.fail_rate and self._random.random() < settings.fail_rate:
                    raise Unavailable("synthetic engine: injected failure before the first token")
                words = _word_stream(prompt_text, request.sampling.seed)
                per_token_s = settings.slowdown / settings.tokens_per_s
                started = time.monotonic()
                for produced in range(1, max_tokens + 1):
                    if request.request_id in self._aborted:
                        yield Delta("", (), FinishReason.ABORT, prompt_tokens, produced - 1)
                        return
                    if settings.fail_after_tokens and produced > settings.fail_after_tokens:
                        raise Internal(f"synthetic engine: injected failure after {settings.fail_after_tokens} tokens")
                    token_id, word = next(words)
                    self._meter.add(1)
                    last = produced == max_tokens
                    yield Delta(
                        text=("" if produced == 1 else " ") + word,
                        token_ids=(token_id,),
                        finish_reason=FinishReason.LENGTH if last else None,
                        prompt_tokens=prompt_tokens,
                        completion_tokens=produced,
                    )
                    if not last:
                        # Pace against the start, so sleep overshoot does not add up.
                        await asyncio.sleep(max(0.0, started + produced * per_token_s - time.monotonic()))
        finally:
            self._active.discard(request.request_id)
            self._aborted.discard(request.request_id)

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return [_hash_embedding(text, self._settings.embedding_dim) for text in texts]

    async def abort(self, request_id: str) -> bool:
        if request_id not in self._active:
            return False
        self._aborted.add(request_id)
        return True

    @property
    def running(self) -> int:
        return self._slots.running

    def stats(self) -> EngineStats:
        slots = self._slots
        return EngineStats(
            running=slots.running,
            waiting=slots.waiting,
            capacity=slots.capacity,
            kv_cache_usage=slots.running / slots.capacity,
            tokens_per_second=self._meter.rate(),
        )

    async def health(self) -> bool:
        return not self._closed

    async def close(self) -> None:
        self._closed = True


def _word_stream(prompt: str, seed: int | None) -> Iterator[tuple[int, str]]:
    """Deterministic words for a prompt and seed."""
    rng = random.Random(hashlib.sha256(f"{seed}:{prompt}".encode()).digest())
    while True:
        index = rng.randrange(len(_WORDS))
        yield index, _WORDS[index]


def _hash_embedding(text: str, dim: int) -> list[float]:
    rng = random.Random(hashlib.sha256(text.encode()).digest())
    vector = [rng.gauss(0.0, 1.0) for _ in range(dim)]
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]
