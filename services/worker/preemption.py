"""Which batch row a worker stops when online work needs its place.

A batch row sent as preemptible may be stopped while the engine is full
and an online request arrives: the newest such row goes (it has done the
least work), its stream ends with ABORTED ("preempted"), and its consumer
retries it once, not preemptible, so no row is stopped twice. vLLM's own
priority scheduling puts online requests ahead of waiting batch rows; this
frees a place among the running ones, on any engine.
"""

from __future__ import annotations


class BatchPreemption:
    def __init__(self) -> None:
        # Preemptible rows running now, oldest first (dicts keep order).
        self._running: dict[str, None] = {}
        self._preempted: set[str] = set()
        # Rows stopped so far (for metrics and tests).
        self.preempted_total = 0

    def started(self, request_id: str) -> None:
        self._running[request_id] = None

    def finished(self, request_id: str) -> bool:
        """Forget the row; True when it ended because it was preempted."""
        self._running.pop(request_id, None)
        if request_id in self._preempted:
            self._preempted.discard(request_id)
            return True
        return False

    def victim(self, *, engine_full: bool) -> str | None:
        """The row to stop for an online request now, if the engine is full
        and a preemptible row runs; it is marked preempted."""
        if not engine_full or not self._running:
            return None
        request_id = next(reversed(self._running))
        del self._running[request_id]
        self._preempted.add(request_id)
        self.preempted_total += 1
        return request_id
