"""Typed settings of each engine kind, one discriminated union keyed by
`kind`. A pool's `engine:` block in the YAML config is one of these; the
worker builds its engine from it (services/worker/engines/)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class _EngineSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SyntheticEngineSettings(_EngineSettings):
    """No model: emits words at a set pace. For measuring the mesh's own
    overhead and for fault injection; never a default."""

    kind: Literal["synthetic"] = "synthetic"
    # Time to first token and steady decode speed of each sequence.
    ttft_ms: float = Field(default=20.0, ge=0)
    tokens_per_s: float = Field(default=200.0, gt=0)
    # Completion length when the request sets no max_tokens.
    default_max_tokens: int = Field(default=32, ge=1)
    # Sequences it runs at once; more wait inside the engine.
    max_concurrency: int = Field(default=64, ge=1)
    # Fault injection: share of requests that fail before their first token,
    # and a token count after which every request fails (0: never).
    fail_rate: float = Field(default=0.0, ge=0, le=1)
    fail_after_tokens: int = Field(default=0, ge=0)
    # Multiplies ttft and per-token time (a slow version for canary tests).
    slowdown: float = Field(default=1.0, gt=0)
    # Dimensions of its (hash-based) embeddings.
    embedding_dim: int = Field(default=384, ge=1)
    seed: int = 0


EngineSettings = Annotated[SyntheticEngineSettings, Field(discriminator="kind")]

# Kinds `headrace up --engine KIND` accepts, with the settings it uses then.
ENGINE_DEFAULTS: dict[str, type[_EngineSettings]] = {
    "synthetic": SyntheticEngineSettings,
}
