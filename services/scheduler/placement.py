"""Placement policies behind one protocol: given a request and the workers
that may take it, pick one. Every policy has the same async signature."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from services.scheduler.registry import WorkerState


@dataclass(frozen=True)
class PlacementRequest:
    request_id: str
    model_version: str
    tenant: str
    # Lower runs first: 0 interactive, 1 standard, 2 batch.
    priority: int
    session_id: str = ""
    # Hashes of the prompt's leading blocks, shortest prefix first.
    prefix_hashes: tuple[int, ...] = ()
    prompt_tokens: int = 0
    max_tokens: int = 0
    exclude: frozenset[str] = frozenset()


class PlacementPolicy(Protocol):
    name: str

    async def choose(self, request: PlacementRequest, candidates: Sequence[WorkerState]) -> WorkerState | None:
        """One of candidates (never empty), or None to wait for capacity."""
        ...


def outstanding_load(state: WorkerState) -> tuple[int, int]:
    """Sort key: sequences placed but not finished (ours, or the engine's own
    count when it knows of more), then tokens still budgeted."""
    reported = state.load.running + state.load.waiting
    return (max(state.leases, reported), state.leased_tokens)


class LeastLoadPolicy:
    """The worker with the least outstanding work."""

    name = "least_load"

    async def choose(self, request: PlacementRequest, candidates: Sequence[WorkerState]) -> WorkerState | None:
        return min(candidates, key=outstanding_load)


POLICIES: dict[str, type[PlacementPolicy]] = {
    LeastLoadPolicy.name: LeastLoadPolicy,
}
