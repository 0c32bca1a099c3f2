"""How long a batch row's call (to the worker, or to the scheduler for a
lease) waits for other rows to share it.

A shared call saves a gRPC call's CPU on both sides for each row in it,
CPU a CPU engine gets instead; a wait costs nothing while the engine has
rows leased ahead to run meanwhile, and is idle time for a slot when it
has none. How many rows the consumer holds leases for says which: many
(a batch alone fills the pool and the rows queued ahead of it), and the
configured window is worth its wait; a handful (the pool's small batch
share while online work is around, or a small job's last rows), and the
rows should go at once. So the window scales with the share of
max_inflight_rows that hold a lease.
"""

from __future__ import annotations

from collections.abc import Callable


class CallWindow:
    def __init__(self, window_s: float, *, held: Callable[[], int], max_rows: int) -> None:
        self.window_s = window_s
        self._held = held
        self._max_rows = max(1, max_rows)

    def __call__(self) -> float:
        return self.window_s * min(1.0, self._held() / self._max_rows)
