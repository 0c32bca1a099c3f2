"""Leases: a claim on one slot of one worker, released by the router when
the request ends, or expired when its holder vanishes (so a crashed router
leaks no capacity)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from services.scheduler.worker_roster import WorkerState


@dataclass
class LeaseRecord:
    lease_id: str
    worker_id: str
    pool: str
    request_id: str
    model_version: str
    tokens: int
    granted_at: float
    # time.monotonic() after which the lease expires, and the same moment in
    # wall-clock milliseconds for the caller.
    expires_at: float
    expires_at_ms: int
    # A batch row's lease (the batch class): online work comes first.
    batch: bool = False
    # A placement made ahead of a cache lookup (only_if_free): its queue
    # wait (priority class, seconds) is counted once it is used, at its
    # release, not at its grant: a hit gives it back unused, and a request
    # that needed no worker must not count as one that got a worker at once.
    uncounted_wait: tuple[int, float] | None = None


class LeaseTable:
    def __init__(self, *, ttl_s: float) -> None:
        self._ttl_s = ttl_s
        self._leases: dict[str, LeaseRecord] = {}

    def __len__(self) -> int:
        return len(self._leases)

    def grant(
        self,
        worker: WorkerState,
        *,
        pool: str,
        request_id: str,
        model_version: str,
        tokens: int,
        batch: bool = False,
    ) -> LeaseRecord:
        now = time.monotonic()
        lease = LeaseRecord(
            lease_id=uuid.uuid4().hex,
            worker_id=worker.worker_id,
            pool=pool,
            request_id=request_id,
            model_version=model_version,
            tokens=tokens,
            granted_at=now,
            expires_at=now + self._ttl_s,
            expires_at_ms=int((time.time() + self._ttl_s) * 1000),
            batch=batch,
        )
        self._leases[lease.lease_id] = lease
        worker.leases += 1
        worker.batch_leases += batch
        worker.leased_tokens += tokens
        worker.lease_ids.add(lease.lease_id)
        return lease

    def get(self, lease_id: str) -> LeaseRecord | None:
        return self._leases.get(lease_id)

    def renew(self, lease_id: str) -> LeaseRecord | None:
        lease = self._leases.get(lease_id)
        if lease is None:
            return None
        lease.expires_at = time.monotonic() + self._ttl_s
        lease.expires_at_ms = int((time.time() + self._ttl_s) * 1000)
        return lease

    def release(self, lease_id: str, worker: WorkerState | None) -> LeaseRecord | None:
        lease = self._leases.pop(lease_id, None)
        if lease is not None and worker is not None and lease_id in worker.lease_ids:
            worker.lease_ids.discard(lease_id)
            worker.leases -= 1
            worker.batch_leases -= lease.batch
            worker.leased_tokens -= lease.tokens
        return lease

    def expired(self) -> list[LeaseRecord]:
        now = time.monotonic()
        return [lease for lease in self._leases.values() if lease.expires_at <= now]

    def drop_worker(self, worker: WorkerState) -> int:
        """Forget the leases of a worker that is gone."""
        for lease_id in worker.lease_ids:
            self._leases.pop(lease_id, None)
        dropped = len(worker.lease_ids)
        worker.lease_ids.clear()
        worker.leases = 0
        worker.batch_leases = 0
        worker.leased_tokens = 0
        return dropped
