"""How an attempt at one row can fail, as the chunk runner sees it."""

from __future__ import annotations

# AttemptError.code of a row the worker stopped to make room for online work.
PREEMPTED = "preempted"


class AttemptError(Exception):
    """The worker answered, but not with a result. `retryable`: another
    attempt may succeed (engine error, timeout, overload); otherwise the
    row itself is at fault and goes to the error file now."""

    def __init__(self, code: str, message: str, *, retryable: bool) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retryable = retryable


class WorkerUnavailable(Exception):
    """The local worker does not answer at all. Not the rows' fault: the
    chunk is handed back to the queue and retried later, and the attempt is
    not counted against its rows."""


class ChunkTimedOut(Exception):
    """A chunk ran past chunk_timeout_s; it is retried (rows already done stay done)."""
