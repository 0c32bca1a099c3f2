"""The same failure logged once per interval, with a count of what was
left out; different failures each get their own line."""

from __future__ import annotations

import logging

import pytest

from headrace.runtime.log_limits import RepeatLimitedLog


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_repeats_are_counted_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    limited = RepeatLimitedLog(logging.getLogger("limits-test"), interval_s=30, clock=clock)
    with caplog.at_level(logging.WARNING, logger="limits-test"):
        assert limited.warning("redis-down", "store unavailable: %s", "refused")
        for _ in range(269):
            clock.now += 0.1
            assert not limited.warning("redis-down", "store unavailable: %s", "refused")
        assert limited.error("bad-bytes", "another kind")
        clock.now = 131.0
        assert limited.warning("redis-down", "store unavailable: %s", "refused")
    messages = [record.getMessage() for record in caplog.records]
    assert messages == [
        "store unavailable: refused",
        "another kind",
        "store unavailable: refused (and 269 more like it in the last 31s, not logged)",
    ]


def test_kinds_are_bounded() -> None:
    clock = Clock()
    limited = RepeatLimitedLog(logging.getLogger("limits-test"), interval_s=30, max_kinds=2, clock=clock)
    assert limited.warning("a", "a")
    assert limited.warning("b", "b")
    assert limited.warning("c", "c")
    # "a" was forgotten (the oldest), so it logs again within the interval.
    assert limited.warning("a", "a")
    assert not limited.warning("c", "c")
