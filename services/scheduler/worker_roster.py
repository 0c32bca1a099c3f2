"""Workers the scheduler knows, fed by their load reports. A worker whose
stream ends or whose last report is older than the staleness bound gets no
new work and is dropped."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from services.scheduler.replica_set import SlotShare, WholeShare

# Budget assumed for a sequence we know nothing of (not leased by us).
TOKENS_PER_UNKNOWN_SEQUENCE = 512


@dataclass(frozen=True)
class WorkerIdentity:
    worker_id: str
    endpoint: str
    pool: str
    models: frozenset[str]
    engine: str


@dataclass(frozen=True)
class LoadSnapshot:
    running: int = 0
    waiting: int = 0
    capacity: int = 0
    kv_cache_usage: float = 0.0
    tokens_per_second: float = 0.0
    healthy: bool = True


@dataclass
class WorkerState:
    identity: WorkerIdentity
    load: LoadSnapshot
    # time.monotonic() of the last report.
    reported_at: float
    draining: bool = False
    # Leases this scheduler holds on the worker, and their token budgets
    # (prompt + max completion): load the worker has not reported yet.
    leases: int = 0
    leased_tokens: int = 0
    # Of those leases, the ones of the batch class (batch rows).
    batch_leases: int = 0
    # Lease ids, so a dropped worker's leases can be dropped too.
    lease_ids: set[str] = field(default_factory=set)
    # Our leases when the last report arrived: what the engine reported
    # beyond them is work placed by others (other scheduler replicas, batch
    # consumers calling the worker directly).
    leases_at_report: int = 0
    # The report stream that owns this entry: when a worker reconnects, the
    # old stream's end must not remove the new registration.
    stream_token: object | None = None
    # This replica's part of the worker's slots (replica_set.py).
    share: SlotShare = field(default_factory=WholeShare)
    # time.monotonic() of the last other sign of life: a lease on it
    # released after a request that went well. A worker whose engine keeps
    # every core busy may report late, but it is not dead while it finishes
    # requests (see seen_at).
    alive_at: float = float("-inf")

    @property
    def worker_id(self) -> str:
        return self.identity.worker_id

    @property
    def external_load(self) -> int:
        """Sequences in the engine (running or waiting) that are not ours."""
        return max(0, self.load.running + self.load.waiting - self.leases_at_report)

    @property
    def outstanding(self) -> int:
        """Sequences placed here and not finished: our leases, counted the
        moment they are granted or released, plus the others' work as last
        reported. (The engine's own count lags by a report interval.)"""
        return self.leases + self.external_load

    @property
    def outstanding_tokens(self) -> int:
        """Token budgets (prompt + completion) of the outstanding sequences;
        others' work, whose budgets we do not know, at a fixed guess."""
        return self.leased_tokens + self.external_load * TOKENS_PER_UNKNOWN_SEQUENCE

    def age_s(self, now: float | None = None) -> float:
        return (now if now is not None else time.monotonic()) - self.reported_at

    @property
    def seen_at(self) -> float:
        """The last sign of life: a load report, or a request that finished well."""
        return max(self.reported_at, self.alive_at)

    def silent_s(self, now: float | None = None) -> float:
        """Seconds since the last sign of life (what staleness is judged by)."""
        return (now if now is not None else time.monotonic()) - self.seen_at


class WorkerRoster:
    def __init__(self, *, stale_after_s: float, share: SlotShare | None = None) -> None:
        self._stale_after_s = stale_after_s
        self._share = share or WholeShare()
        self._workers: dict[str, WorkerState] = {}

    def __len__(self) -> int:
        return len(self._workers)

    def report(self, identity: WorkerIdentity, load: LoadSnapshot, *, draining: bool) -> WorkerState:
        now = time.monotonic()
        state = self._workers.get(identity.worker_id)
        if state is None or state.identity != identity:
            # New, or restarted with another identity: start clean, but keep
            # the leases already granted on it.
            previous = state
            state = WorkerState(identity=identity, load=load, reported_at=now, draining=draining, share=self._share)
            if previous is not None:
                state.leases, state.leased_tokens, state.batch_leases, state.lease_ids = (
                    previous.leases,
                    previous.leased_tokens,
                    previous.batch_leases,
                    previous.lease_ids,
                )
                state.alive_at = previous.alive_at
            self._workers[identity.worker_id] = state
        else:
            state.load = load
            state.reported_at = now
            state.draining = draining
        state.leases_at_report = state.leases
        return state

    def replicas_live(self) -> int:
        """Scheduler replicas sharing these workers' slots (1: this one alone)."""
        return self._share.replicas

    def remove(self, worker_id: str) -> WorkerState | None:
        return self._workers.pop(worker_id, None)

    def get(self, worker_id: str) -> WorkerState | None:
        return self._workers.get(worker_id)

    def all(self) -> list[WorkerState]:
        return list(self._workers.values())

    def accepting(self, state: WorkerState, now: float | None = None) -> bool:
        """Fresh, healthy and not draining: may get new work."""
        return state.silent_s(now) <= self._stale_after_s and state.load.healthy and not state.draining

    def candidates(self, model_version: str, exclude: Iterable[str] = ()) -> list[WorkerState]:
        return list(self._eligible(model_version, exclude))

    def has_candidate(self, model_version: str, exclude: Iterable[str] = (), only: str = "") -> bool:
        """Whether candidates() would name any worker (stops at the first);
        `only`: that worker, if it is one."""
        eligible = self._eligible(model_version, exclude)
        if only:
            return any(state.worker_id == only for state in eligible)
        return next(eligible, None) is not None

    def _eligible(self, model_version: str, exclude: Iterable[str]) -> Iterator[WorkerState]:
        now = time.monotonic()
        excluded = set(exclude)
        return (
            state
            for state in self._workers.values()
            if model_version in state.identity.models and state.worker_id not in excluded and self.accepting(state, now)
        )

    def drop_stale(self) -> list[WorkerState]:
        now = time.monotonic()
        stale = [s for s in self._workers.values() if s.silent_s(now) > self._stale_after_s]
        for state in stale:
            del self._workers[state.worker_id]
        return stale

    def serving(self, model_version: str) -> list[WorkerState]:
        """Every known worker serving the version, accepting or not."""
        return [s for s in self._workers.values() if model_version in s.identity.models]
