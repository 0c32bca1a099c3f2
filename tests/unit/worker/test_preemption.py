"""Which batch rows a worker stops for online work (preemption.py)."""

from __future__ import annotations

from services.worker.preemption import BatchPreemption


def test_victims_are_the_newest_rows_and_each_is_stopped_once() -> None:
    preemption = BatchPreemption()
    for request_id in ("a", "b", "c", "d"):
        preemption.started(request_id)
    assert preemption.victims(2) == ["d", "c"]
    # Only what still runs preemptibly can be chosen, never more.
    assert preemption.victims(5) == ["b", "a"]
    assert preemption.victims(1) == []
    assert preemption.preempted_total == 4
    # A stopped row's end says so, once.
    assert preemption.finished("c") is True
    assert preemption.finished("c") is False


def test_no_victims_when_none_are_asked_for_or_rows_ended() -> None:
    preemption = BatchPreemption()
    preemption.started("a")
    assert preemption.victims(0) == []
    assert preemption.finished("a") is False
    assert preemption.victims(1) == []
    assert preemption.preempted_total == 0
