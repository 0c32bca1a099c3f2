"""Which batch rows a worker stops for online work (preemption.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from services.worker.engines.base import Engine, abort_many
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


class _OneByOne:
    def __init__(self) -> None:
        self.aborted: list[str] = []

    async def abort(self, request_id: str) -> bool:
        self.aborted.append(request_id)
        return True


class _AllAtOnce(_OneByOne):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[list[str]] = []

    async def abort_many(self, request_ids: Sequence[str]) -> int:
        self.calls.append(list(request_ids))
        return len(request_ids)


async def test_victims_are_stopped_in_one_call_where_the_engine_takes_a_list() -> None:
    together = _AllAtOnce()
    await abort_many(cast(Engine, together), ["d", "c", "b"])
    assert together.calls == [["d", "c", "b"]] and together.aborted == []
    each = _OneByOne()
    await abort_many(cast(Engine, each), ["d", "c"])
    assert sorted(each.aborted) == ["c", "d"]
