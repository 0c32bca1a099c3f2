"""Logging the same failure once, not once per call.

When a dependency is down or a client sends garbage in a loop, every call
fails the same way; a traceback per call buries everything else in the log
(a Redis outage of 25 s once wrote 270 of them). `RepeatLimitedLog` logs
the first occurrence of a kind of failure, then at most one line per
`interval_s` for it, saying how many were left out:

    _FAILURES = RepeatLimitedLog(log, interval_s=30)
    _FAILURES.error(("Lookup", "ConnectionError"), "lookup failed: %s", exc, exc_info=exc)

A kind is whatever key the caller picks (method and exception type, say).
Keys are bounded: past `max_kinds`, the oldest is forgotten.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any


@dataclass
class _Seen:
    last_logged: float
    left_out: int = 0


class RepeatLimitedLog:
    def __init__(
        self,
        logger: logging.Logger,
        *,
        interval_s: float = 30.0,
        max_kinds: int = 256,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval_s = interval_s
        self._max_kinds = max_kinds
        self._clock = clock
        self._seen: OrderedDict[Hashable, _Seen] = OrderedDict()

    def log(self, level: int, kind: Hashable, message: str, *args: Any, exc_info: Any = None) -> bool:
        """Log `message` unless `kind` was logged within the interval; True
        if it was logged."""
        now = self._clock()
        seen = self._seen.get(kind)
        if seen is not None and now - seen.last_logged < self._interval_s:
            seen.left_out += 1
            return False
        if seen is not None and seen.left_out:
            message += " (and %d more like it in the last %.0fs, not logged)"
            args = (*args, seen.left_out, now - seen.last_logged)
        self._seen[kind] = _Seen(last_logged=now)
        self._seen.move_to_end(kind)
        while len(self._seen) > self._max_kinds:
            self._seen.popitem(last=False)
        self._logger.log(level, message, *args, exc_info=exc_info)
        return True

    def error(self, kind: Hashable, message: str, *args: Any, exc_info: Any = None) -> bool:
        return self.log(logging.ERROR, kind, message, *args, exc_info=exc_info)

    def warning(self, kind: Hashable, message: str, *args: Any, exc_info: Any = None) -> bool:
        return self.log(logging.WARNING, kind, message, *args, exc_info=exc_info)
