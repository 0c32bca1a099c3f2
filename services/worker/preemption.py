"""Which batch rows a worker stops when online work arrives.

A batch row sent as preemptible may be stopped when an online request
arrives and the worker holds more batch rows than the pool's
batch_share_while_online of its engine, or the engine is full: the newest
such rows go (they have done the least work; in vLLM they are often still
in its waiting queue), their streams end with ABORTED ("preempted"), and
their consumer asks the scheduler again for each, not preemptible, so no
row is stopped twice. The scheduler grants batch rows only up to the same
share while online work is around, so the stopped rows wait there.

Rows the scheduler leased before the online request came are still on
their way (a consumer gathers rows for a worker call for up to
worker_call_window_ms): a preemptible row that reaches the worker while
online work runs there and the batch already holds its share is turned
away the same way, before it reaches the engine. Without that, the first
online request after a job took the pool stopped the rows it found and
then met the rows that arrived after it (bench-batch on vLLM: the
first arrival's TTFT 230-420 ms against ~70 ms).

Why stop running rows at all: vLLM's priority scheduling puts online
requests ahead of waiting batch rows, but every running sequence shares
each engine step with them, and on a CPU a step with 64 sequences is many
times one with a few: an online request's first token waits for them.
"""

from __future__ import annotations

from services.worker import metrics


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

    def turned_away(self) -> None:
        """A preemptible row refused on arrival (counted as preempted)."""
        self.preempted_total += 1
        metrics.PREEMPTIONS.inc()

    def victims(self, count: int) -> list[str]:
        """Up to `count` preemptible rows to stop now, newest first; they
        are marked preempted."""
        chosen: list[str] = []
        while len(chosen) < count and self._running:
            request_id = next(reversed(self._running))
            del self._running[request_id]
            self._preempted.add(request_id)
            chosen.append(request_id)
        self.preempted_total += len(chosen)
        metrics.PREEMPTIONS.inc(len(chosen))
        return chosen
