"""Batch rows' leases, asked for together (Scheduler.PlaceMany).

Every batch row runs under a lease of its own, and a unary gRPC call
costs a few hundred microseconds of CPU on each side whatever it carries:
with one Place per row, asking for leases was a good part of what the
scheduler and the consumer did per row, CPU that a CPU engine on the same
cores does not get. So the rows that ask within a window of each other
(the caller's: a batch consumer's grows with the rows it holds leases
for, services/worker/consumer/call_window.py) go in one PlaceMany call.
Every place in it waits in the scheduler's queue as a Place would,
weighed against online work and other tenants' rows by the same fair
queue, and its lease comes back on the call's stream as soon as it is
granted (the places one scheduling step grants come in one message).

A replica that answers UNAVAILABLE is rested for a moment and the places
it had not decided go to another; with none left, they are refused
UNAVAILABLE (the row decides how long to wait for a scheduler:
row_leases.py). A replica without PlaceMany (an older one during an
upgrade) answers UNIMPLEMENTED: its places then go one Place each. A
coalesced place is not on its row's trace (the call has a trace of its
own).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import grpc.aio

from headrace.runtime.errors import from_rpc_error, no_such_method, status_code_numbered
from headrace.runtime.scheduler_replicas import SchedulerReplicas
from headrace.v1 import scheduler_pb2

log = logging.getLogger(__name__)

# Places per PlaceMany (the scheduler takes up to 256).
MAX_PER_CALL = 256
# Rows that ask within this long of the first go in one call.
GATHER_S = 0.002
# Per call: a place waits at most the scheduler's max_queue_wait_s (60 s
# by default); a little above it, so the scheduler's answer is the one we get.
CALL_TIMEOUT_S = 75.0
# A replica that answered UNAVAILABLE gets no call for this long.
REST_S = 1.0


class PlaceRefused(Exception):
    """No lease for this place: what the scheduler (or the call) answered."""

    def __init__(self, code: grpc.StatusCode, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s


@dataclass(eq=False)
class _Ask:
    request: scheduler_pb2.PlaceRequest
    future: asyncio.Future[scheduler_pb2.PlaceResponse]


class PlaceCoalescer:
    def __init__(
        self,
        replicas: SchedulerReplicas,
        *,
        max_per_call: int = MAX_PER_CALL,
        gather_s: float | Callable[[], float] = GATHER_S,
        call_timeout_s: float = CALL_TIMEOUT_S,
        rest_s: float = REST_S,
    ) -> None:
        self._replicas = replicas
        self._max_per_call = max_per_call
        # A number, or asked each time (a batch consumer's scales with its rows).
        self._gather_s: Callable[[], float] = gather_s if callable(gather_s) else lambda: gather_s
        self._call_timeout_s = call_timeout_s
        self._rest_s = rest_s
        self._waiting: list[_Ask] = []
        self._flush_at: asyncio.Handle | None = None
        self._resting_until = [0.0] * len(replicas.targets)
        self._many_supported = [True] * len(replicas.targets)
        self._calls: set[asyncio.Task[None]] = set()
        self._closed = False
        # Calls made and places sent (for tests and the benchmark's notes).
        self.many_calls = 0
        self.single_calls = 0
        self.places_sent = 0

    async def place(self, request: scheduler_pb2.PlaceRequest) -> scheduler_pb2.PlaceResponse:
        """A lease for one batch row. Raises PlaceRefused when the scheduler
        refuses it (queue full, no such worker, out of time, ...)."""
        if self._closed:
            raise PlaceRefused(grpc.StatusCode.UNAVAILABLE, "the consumer is stopping")
        ask = _Ask(request, asyncio.get_running_loop().create_future())
        self._waiting.append(ask)
        if self._flush_at is None:
            self._flush_at = asyncio.get_running_loop().call_later(self._gather_s(), self._flush)
        try:
            return await ask.future
        finally:
            # Its row stopped asking: out of the line if it is still there
            # (in a call, a lease that comes for it goes back: _settle).
            if ask.future.cancelled() and ask in self._waiting:
                self._waiting.remove(ask)

    def _flush(self) -> None:
        """Every waiting place into calls, to a replica that is up."""
        self._flush_at = None
        while self._waiting and not self._closed:
            batch = self._waiting[: self._max_per_call]
            del self._waiting[: len(batch)]
            index = self._replica_up()
            if index is None:
                refusal = PlaceRefused(grpc.StatusCode.UNAVAILABLE, "no scheduler replica answers")
                for ask in batch:
                    _refuse(ask, refusal)
                continue
            # A context of its own: not the trace of the row that asked first.
            task = asyncio.get_running_loop().create_task(
                self._call(index, batch), name="batch-row-places", context=contextvars.Context()
            )
            self._calls.add(task)
            task.add_done_callback(self._calls.discard)

    def _replica_up(self) -> int | None:
        now = time.monotonic()
        return next((index for index in self._replicas.order() if self._resting_until[index] <= now), None)

    def _again(self, asks: list[_Ask]) -> None:
        """Places a replica did not decide: ahead of those that came since."""
        self._waiting[:0] = [ask for ask in asks if not ask.future.done()]
        if self._waiting and self._flush_at is None:
            self._flush_at = asyncio.get_running_loop().call_soon(self._flush)

    async def _call(self, index: int, batch: list[_Ask]) -> None:
        live = [ask for ask in batch if not ask.future.done()]
        if not live:
            return
        if not self._many_supported[index]:
            await asyncio.gather(*(self._place_one(ask) for ask in live))
            return
        self.many_calls += 1
        self.places_sent += len(live)
        decided: set[int] = set()
        call = self._replicas.place_many_at(
            index, scheduler_pb2.PlaceManyRequest(places=[ask.request for ask in live]), timeout=self._call_timeout_s
        )
        try:
            async for message in call:
                for outcome in message.outcomes:
                    if outcome.index >= len(live) or outcome.index in decided:
                        continue
                    decided.add(outcome.index)
                    self._decide(index, live[outcome.index], outcome)
        except grpc.aio.AioRpcError as exc:
            self._call_failed(index, [ask for i, ask in enumerate(live) if i not in decided], exc)
            return
        except asyncio.CancelledError:
            call.cancel()
            for ask in live:
                ask.future.cancel()
            raise
        except Exception as exc:
            # Never leave a row waiting on a call that is over.
            log.exception("scheduler %s: PlaceMany failed", self._target(index))
            call.cancel()
            self._refuse_all(live, PlaceRefused(grpc.StatusCode.INTERNAL, f"PlaceMany failed: {exc!r}"))
            return
        # Every place has its outcome when the stream ends; one that has none
        # is the scheduler's fault: refused (its row asks again after a
        # pause), not sent again at once.
        self._refuse_all(
            live, PlaceRefused(grpc.StatusCode.INTERNAL, "the scheduler ended PlaceMany before deciding this place")
        )

    @staticmethod
    def _refuse_all(asks: list[_Ask], refusal: PlaceRefused) -> None:
        for ask in asks:
            _refuse(ask, refusal)

    def _decide(self, index: int, ask: _Ask, outcome: scheduler_pb2.PlaceOutcome) -> None:
        if outcome.HasField("placed"):
            self._replicas.remember(outcome.placed.lease.lease_id, index)
            self._settle(ask, outcome.placed)
            return
        refused = outcome.refused
        code = status_code_numbered(refused.code)
        _refuse(ask, PlaceRefused(code, refused.message, refused.retry_after_s or None))

    def _call_failed(self, index: int, undecided: list[_Ask], exc: grpc.aio.AioRpcError) -> None:
        code = exc.code()
        if no_such_method(exc):
            log.info("scheduler %s has no PlaceMany (older version): one Place per row", self._target(index))
            self._many_supported[index] = False
            self._again(undecided)
            return
        if code == grpc.StatusCode.UNAVAILABLE:
            self._resting_until[index] = time.monotonic() + self._rest_s
            if self._replica_up() is not None:
                log.warning(
                    "scheduler %s: PlaceMany %s (%s); asking another", self._target(index), code.name, exc.details()
                )
                self._again(undecided)
                return
        self._refuse_all(undecided, _refusal(exc))

    async def _place_one(self, ask: _Ask) -> None:
        """One Place (a replica without PlaceMany), with the replicas' own
        failover; the lease is remembered where it came from."""
        self.single_calls += 1
        try:
            response = await self._replicas.place(ask.request, options=lambda: {"timeout": self._call_timeout_s})
        except grpc.aio.AioRpcError as exc:
            _refuse(ask, _refusal(exc))
            return
        self._settle(ask, response)

    def _settle(self, ask: _Ask, placed: scheduler_pb2.PlaceResponse) -> None:
        if not ask.future.done():
            ask.future.set_result(placed)
            return
        # Its row stopped asking: the slot goes straight back.
        release = scheduler_pb2.ReleaseRequest(
            lease_id=placed.lease.lease_id, outcome=scheduler_pb2.LEASE_OUTCOME_UNUSED
        )
        task = asyncio.get_running_loop().create_task(self._give_back(release), name="batch-row-place-unused")
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)

    async def _give_back(self, release: scheduler_pb2.ReleaseRequest) -> None:
        try:
            await self._replicas.release(release, timeout=5.0)
        except grpc.aio.AioRpcError as exc:
            log.warning("unused row lease %s: release failed (%s); it will expire", release.lease_id, exc.code().name)

    def _target(self, index: int) -> str:
        return self._replicas.targets[index]

    async def close(self) -> None:
        """Stop asking: places waiting or in a call are cancelled."""
        self._closed = True
        if self._flush_at is not None:
            self._flush_at.cancel()
        for ask in self._waiting:
            ask.future.cancel()
        self._waiting.clear()
        for task in list(self._calls):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._calls, return_exceptions=True)


def _refusal(exc: grpc.aio.AioRpcError) -> PlaceRefused:
    code = exc.code()
    return PlaceRefused(code, exc.details() or code.name.lower(), from_rpc_error(exc).retry_after_s)


def _refuse(ask: _Ask, refusal: PlaceRefused) -> None:
    if not ask.future.done():
        ask.future.set_exception(refusal)
