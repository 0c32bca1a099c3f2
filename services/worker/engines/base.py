"""The one small protocol every engine sits behind, and the domain types it
speaks. Nothing here knows gRPC: the worker's servicer converts protos to
these and back."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


class Priority(enum.IntEnum):
    """Lower runs first (vLLM's convention)."""

    INTERACTIVE = 0
    STANDARD = 1
    BATCH = 2


class FinishReason(enum.Enum):
    STOP = "stop"
    LENGTH = "length"
    ABORT = "abort"
    ERROR = "error"


@dataclass(frozen=True)
class ChatTurn:
    role: str
    content: str
    name: str = ""


@dataclass(frozen=True)
class Sampling:
    """Sampling parameters; None means the engine's default."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    ignore_eos: bool = False
    min_tokens: int | None = None


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    # The model version to run, e.g. "smollm2@1".
    model: str
    # Exactly one of prompt and messages is set.
    prompt: str | None
    messages: tuple[ChatTurn, ...] = ()
    sampling: Sampling = field(default_factory=Sampling)
    priority: Priority = Priority.STANDARD
    # The caller wants only the whole answer (a unary request, a batch row):
    # an engine may then ask its backend for it in one call, not a stream.
    whole_answer: bool = False


@dataclass(frozen=True)
class Delta:
    """New output of one sequence. The last delta has finish_reason set and
    the final token counts."""

    text: str
    token_ids: tuple[int, ...] = ()
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0


@dataclass(frozen=True)
class EngineStats:
    """Load as the engine sees it; the scheduler places by it."""

    running: int
    waiting: int
    # Sequences it can run at once now (e.g. vLLM's max_num_seqs).
    capacity: int
    kv_cache_usage: float = 0.0
    tokens_per_second: float = 0.0


@runtime_checkable
class Engine(Protocol):
    """What the worker needs of an engine."""

    # Engine kind, e.g. "vllm", "synthetic".
    kind: str

    async def start(self) -> None:
        """Load the model; the worker serves only once this returns."""
        ...

    def generate(self, request: GenerationRequest) -> AsyncGenerator[Delta, None]:
        """Stream deltas. Closing the iterator early (a cancelled call) must
        free the sequence in the engine."""
        ...

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Embed texts in order; raise errors.Unimplemented if the engine cannot."""
        ...

    async def abort(self, request_id: str) -> bool:
        """Stop a running request; False if it was not running."""
        ...

    @property
    def running(self) -> int:
        """Sequences running now, as stats() counts them; cheap, because the
        worker reads it for every delta it sends."""
        ...

    def stats(self) -> EngineStats: ...

    async def health(self) -> bool:
        """True while the engine can serve."""
        ...

    async def close(self) -> None:
        """Free the engine's resources (processes, memory)."""
        ...


async def abort_many(engine: Engine, request_ids: Sequence[str]) -> None:
    """Stop several requests at once: in one call where the engine has one
    (vLLM: one message to its engine core, handled before its next step,
    instead of one message and one task per request; a preemption stops
    every batch row beyond the pool's share, up to a couple of hundred),
    else one abort each."""
    many: Callable[[Sequence[str]], Awaitable[object]] | None = getattr(engine, "abort_many", None)
    if many is not None:
        await many(request_ids)
        return
    await asyncio.gather(*(engine.abort(request_id) for request_id in request_ids))
