"""Settling the futures of callers who wait on a shared call (coalesced
releases and cache stores): each settles once, whichever comes first, and
an outcome nobody waits for any more is still read (no "exception never
retrieved" noise)."""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

T = TypeVar("T")


def settle(future: asyncio.Future[T], result: T) -> None:
    if not future.done():
        future.set_result(result)


def fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


def read_outcome(future: asyncio.Future[Any]) -> None:
    """A done callback: reads the exception of a future its caller left."""
    if not future.cancelled():
        future.exception()
