"""One routed generation against the workers (services/router/worker_attempts.py),
on fake workers: retries, the lease given back on every path, the last
chunk filled in, whole answers, and a placement made ahead of the cache."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field

import pytest
from prometheus_client import REGISTRY

from headrace.models.registry import Resolution
from headrace.runtime.errors import HeadraceError, InvalidArgument, QueueFull, Unavailable
from headrace.runtime.routing_settings import CircuitBreakerSettings, RetrySettings
from headrace.v1 import generation_pb2, scheduler_pb2, worker_pb2
from services.router.leasing import LeaseUse
from services.router.routing.attempts import AttemptPlan
from services.router.routing.circuit_breaker import CircuitBreakers
from services.router.routing.decision import RouteDecision, RoutingRequest
from services.router.routing.retry_budget import Backoff, RetryBudget
from services.router.worker_attempts import RequestMeta, WorkerAttempts

MODEL = "m@1"
OK = scheduler_pb2.LEASE_OUTCOME_OK
ERROR = scheduler_pb2.LEASE_OUTCOME_ERROR
CANCELLED = scheduler_pb2.LEASE_OUTCOME_CANCELLED


def chunk(text: str, **fields: object) -> generation_pb2.GenerateStreamResponse:
    return generation_pb2.GenerateStreamResponse(request_id="r", text=text, token_ids=[len(text)], **fields)  # type: ignore[arg-type]


def last(
    text: str, *, tokens: int = 3, engine_seconds: float = 2.0, **fields: object
) -> generation_pb2.GenerateStreamResponse:
    return chunk(
        text,
        finish_reason=generation_pb2.FINISH_REASON_STOP,
        usage=generation_pb2.Usage(prompt_tokens=5, completion_tokens=tokens, total_tokens=5 + tokens),
        cost=generation_pb2.Cost(engine_seconds=engine_seconds),
        **fields,
    )


@dataclass
class Script:
    """What one worker does: these chunks, then this error (if any); or it
    hangs after them (a slow engine) until the call is cancelled."""

    chunks: list[generation_pb2.GenerateStreamResponse] = field(default_factory=list)
    error: HeadraceError | None = None
    hang: bool = False


@dataclass
class FakeWorkers:
    """Workers for unit tests: placements in order, a script per worker."""

    placements: list[str | HeadraceError]
    scripts: dict[str, Script]
    place_gate: asyncio.Event | None = None
    asked: list[scheduler_pb2.PlaceRequest] = field(default_factory=list)
    held: dict[str, LeaseUse] = field(default_factory=dict)
    released: list[str] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)
    place_cancelled: bool = False

    async def place(self, request: scheduler_pb2.PlaceRequest) -> scheduler_pb2.PlaceResponse:
        self.asked.append(request)
        if self.place_gate is not None:
            try:
                await self.place_gate.wait()
            except asyncio.CancelledError:
                self.place_cancelled = True
                raise
        outcome = self.placements.pop(0)
        if isinstance(outcome, HeadraceError):
            raise outcome
        lease = scheduler_pb2.Lease(lease_id=f"lease-{outcome}", worker_id=outcome, endpoint=f"{outcome}:1")
        return scheduler_pb2.PlaceResponse(lease=lease, queue_ms=1.5, pool="p", price_per_hour=99.0)

    @contextlib.asynccontextmanager
    async def hold(self, lease: scheduler_pb2.Lease) -> AsyncIterator[LeaseUse]:
        # As Leasing.hold: a cancel says CANCELLED (unless the answer was
        # whole), the use is given back however the block ends.
        use = LeaseUse(lease=lease)
        try:
            yield use
        except (asyncio.CancelledError, GeneratorExit):
            if use.outcome != OK:
                use.outcome = CANCELLED
            raise
        finally:
            self.held[lease.worker_id] = use

    def release(self, lease: scheduler_pb2.Lease) -> None:
        self.released.append(lease.worker_id)

    async def generate(
        self, lease: scheduler_pb2.Lease, request: worker_pb2.WorkerGenerateRequest
    ) -> AsyncGenerator[generation_pb2.GenerateStreamResponse, None]:
        script = self.scripts[lease.worker_id]
        try:
            for item in script.chunks:
                sent = generation_pb2.GenerateStreamResponse()
                sent.CopyFrom(item)
                yield sent
            if script.error is not None:
                raise script.error
            if script.hang:
                await asyncio.Event().wait()
        finally:
            self.closed.append(lease.worker_id)


def plan(*, fallbacks: tuple[str, ...] = ()) -> AttemptPlan:
    def resolution(version: str) -> Resolution:
        return Resolution(model_version=version, pool="p", engine="synthetic", price_per_hour=3.6, reason="default")

    async def no_sleep(seconds: float) -> None:
        return None

    breaker = CircuitBreakerSettings(failure_threshold=5, open_s=30.0)
    retry = RetrySettings(budget_ratio=0.0, budget_min_per_s=0.0, budget_capacity=10.0)
    return AttemptPlan(
        decision=RouteDecision(
            request=RoutingRequest(request_id="r", tenant="t", model="m", text="hi"),
            primary=resolution(MODEL),
            reasons=("default",),
            fallbacks=tuple(resolution(f) for f in fallbacks),
        ),
        worker_breakers=CircuitBreakers("worker", breaker),
        model_breakers=CircuitBreakers("model", breaker),
        budget=RetryBudget(retry),
        backoff=Backoff(RetrySettings(backoff_base_ms=1, backoff_max_ms=1), rng=random.Random(1)),
        max_attempts=3,
        sleep=no_sleep,
    )


def attempts_on(workers: FakeWorkers, *, whole_answer: bool = False, **plan_args: tuple[str, ...]) -> WorkerAttempts:
    request = generation_pb2.GenerateRequest(prompt="hello there", sampling=generation_pb2.SamplingParams(max_tokens=3))
    meta = RequestMeta(tenant="t", request_id="r", started=time.monotonic(), whole_answer=whole_answer)
    return WorkerAttempts(workers, plan(**plan_args), request, meta)


ROUTE = generation_pb2.RouteInfo(reason="default", cache=generation_pb2.CACHE_OUTCOME_MISS)


def ttft_count() -> float:
    return REGISTRY.get_sample_value("headrace_router_ttft_seconds_count", {"model": MODEL}) or 0.0


async def test_a_worker_failing_before_its_first_token_is_retried_on_another() -> None:
    workers = FakeWorkers(
        placements=["w0", "w1"],
        scripts={"w0": Script(error=Unavailable("engine down")), "w1": Script([chunk("Hel"), last("lo")])},
    )
    attempts = attempts_on(workers)
    chunks = [c async for c in attempts.stream(ROUTE)]
    assert [c.text for c in chunks] == ["Hel", "lo"]
    # The second placement kept away from the worker that failed.
    assert list(workers.asked[1].exclude_workers) == ["w0"]
    route = chunks[0].route
    assert (route.worker_id, route.attempts, route.model_version, route.cache) == ("w1", 2, MODEL, ROUTE.cache)
    assert chunks[0].model == MODEL
    # Both leases went back, each with how it went; both worker calls ended.
    assert {w: u.outcome for w, u in workers.held.items()} == {"w0": ERROR, "w1": OK}
    assert sorted(workers.closed) == ["w0", "w1"]
    assert [(a.worker_id, a.error) for a in attempts.outcomes] == [("w0", "UNAVAILABLE"), ("w1", "")]
    served = attempts.served
    assert served is not None and served.last.finish_reason and served.route.worker_id == "w1"
    assert ROUTE.worker_id == ""  # what the caller passed is not changed


async def test_the_last_chunk_carries_timing_and_cost() -> None:
    workers = FakeWorkers(placements=["w0"], scripts={"w0": Script([chunk("a"), last("b", engine_seconds=2.0)])})
    attempts = attempts_on(workers)
    chunks = [c async for c in attempts.stream(ROUTE)]
    final = chunks[-1]
    # The pool that served is the version's own: its price, 3.6 USD per hour.
    assert final.cost.usd == pytest.approx(2.0 * 3.6 / 3600)
    assert final.timing.queue_ms == 1.5
    assert attempts.ttft_s is not None and final.timing.ttft_ms == pytest.approx(attempts.ttft_s * 1000)
    assert 0 < final.timing.ttft_ms <= final.timing.total_ms
    assert workers.held["w0"].usage == final.usage
    assert workers.held["w0"].ttft_s == attempts.ttft_s


async def test_a_whole_answer_keeps_the_ttft_the_worker_reports() -> None:
    # The worker held its tokens 40 ms after the first one.
    timing = generation_pb2.Timing(ttft_ms=10.0, total_ms=50.0)
    workers = FakeWorkers(placements=["w0"], scripts={"w0": Script([last("whole", timing=timing)])})
    attempts = attempts_on(workers, whole_answer=True)
    before = ttft_count()
    started = time.monotonic()
    [final] = [c async for c in attempts.stream(ROUTE)]
    elapsed_ms = (time.monotonic() - started) * 1000
    assert attempts.ttft_s is not None
    assert final.timing.ttft_ms == pytest.approx(attempts.ttft_s * 1000)
    assert final.timing.ttft_ms <= final.timing.total_ms - 40.0 + elapsed_ms
    assert ttft_count() == before + 1


async def test_a_whole_answer_given_in_one_piece_has_no_ttft() -> None:
    # An engine that answered in one piece (a unary upstream call): no timing from the worker.
    workers = FakeWorkers(placements=["w0"], scripts={"w0": Script([last("whole")])})
    attempts = attempts_on(workers, whole_answer=True)
    before = ttft_count()
    [final] = [c async for c in attempts.stream(ROUTE)]
    assert attempts.ttft_s is None
    assert final.timing.ttft_ms == 0.0 and final.timing.total_ms > 0
    assert ttft_count() == before
    assert workers.held["w0"].ttft_s is None
    assert [a.ttft_s for a in attempts.outcomes] == [None]


async def test_a_client_closing_the_stream_cancels_the_worker_call_and_gives_the_lease_back() -> None:
    workers = FakeWorkers(placements=["w0"], scripts={"w0": Script([chunk("a"), chunk("b"), last("c")])})
    attempts = attempts_on(workers)
    stream = attempts.stream(ROUTE)
    assert (await anext(stream)).text == "a"
    await stream.aclose()
    assert workers.held["w0"].outcome == CANCELLED and workers.closed == ["w0"]
    assert attempts.served is None


async def test_a_client_that_stops_at_the_last_chunk_was_served() -> None:
    # The worker's status comes a moment after its last message; a client
    # that stops reading at the finish (the typed client cancels its call as
    # it leaves the loop) got the whole answer: served, not cancelled.
    workers = FakeWorkers(placements=["w0"], scripts={"w0": Script([chunk("a"), last("b")], hang=True)})
    attempts = attempts_on(workers)
    stream = attempts.stream(ROUTE)
    async for c in stream:
        if c.finish_reason:
            break
    await stream.aclose()
    assert workers.held["w0"].outcome == OK and workers.closed == ["w0"]
    assert [(a.worker_id, a.error) for a in attempts.outcomes] == [("w0", "")]
    assert attempts.served is not None and attempts.served.last.text == "b"


async def test_a_worker_status_failing_after_the_last_chunk_does_not_fail_a_whole_answer() -> None:
    workers = FakeWorkers(
        placements=["w0"], scripts={"w0": Script([chunk("a"), last("b")], error=Unavailable("connection reset"))}
    )
    attempts = attempts_on(workers)
    chunks = [c async for c in attempts.stream(ROUTE)]
    assert [c.text for c in chunks] == ["a", "b"] and chunks[-1].finish_reason
    assert workers.held["w0"].outcome == OK
    assert [(a.worker_id, a.error) for a in attempts.outcomes] == [("w0", "")]


async def test_a_cancelled_request_gives_the_lease_back() -> None:
    workers = FakeWorkers(placements=["w0"], scripts={"w0": Script([chunk("a")], hang=True)})
    attempts = attempts_on(workers)
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in attempts.stream(ROUTE):
            first.set()

    task = asyncio.create_task(consume())
    await first.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert workers.held["w0"].outcome == CANCELLED and workers.closed == ["w0"]


async def test_a_failure_after_the_first_token_reaches_the_client_saying_where() -> None:
    workers = FakeWorkers(
        placements=["w0", "w1"], scripts={"w0": Script([chunk("a")], error=Unavailable("engine died"))}
    )
    attempts = attempts_on(workers)
    got: list[str] = []
    with pytest.raises(Unavailable, match=r"after the first token on m@1 \(worker w0\): engine died"):
        async for c in attempts.stream(ROUTE):
            got.append(c.text)
    assert got == ["a"] and len(workers.asked) == 1
    assert workers.held["w0"].outcome == ERROR


async def test_a_client_error_is_not_retried() -> None:
    workers = FakeWorkers(placements=["w0", "w1"], scripts={"w0": Script(error=InvalidArgument("bad prompt"))})
    with pytest.raises(InvalidArgument, match="bad prompt"):
        [c async for c in attempts_on(workers).stream(ROUTE)]
    assert len(workers.asked) == 1 and workers.held["w0"].outcome == ERROR


async def test_no_worker_for_the_version_moves_to_the_fallback() -> None:
    workers = FakeWorkers(placements=[Unavailable("no worker"), "w9"], scripts={"w9": Script([last("ok")])})
    attempts = attempts_on(workers, fallbacks=("m@0",))
    [final] = [c async for c in attempts.stream(ROUTE)]
    assert [r.model_version for r in workers.asked] == [MODEL, "m@0"]
    assert final.route.model_version == "m@0" and final.route.reason == "default,fallback:m@1"


async def test_a_placement_made_ahead_is_used_once_the_cache_missed() -> None:
    workers = FakeWorkers(placements=["w0"], scripts={"w0": Script([last("ok")])})
    attempts = attempts_on(workers)
    attempts.place_ahead()
    await asyncio.sleep(0)
    [final] = [c async for c in attempts.stream(ROUTE)]
    assert final.route.worker_id == "w0" and workers.released == []
    # Asked for a slot free now only, never a place in the queue.
    assert [r.only_if_free for r in workers.asked] == [True]


async def test_no_slot_free_ahead_places_again_queueing_after_a_miss() -> None:
    busy = QueueFull("no free slot now", retry_after_s=1.0)
    workers = FakeWorkers(placements=[busy, "w0"], scripts={"w0": Script([last("ok")])})
    attempts = attempts_on(workers)
    attempts.place_ahead()
    [final] = [c async for c in attempts.stream(ROUTE)]
    assert final.route.worker_id == "w0" and final.route.attempts == 1
    assert [r.only_if_free for r in workers.asked] == [True, False]


async def test_a_placement_made_ahead_goes_back_when_the_cache_answers() -> None:
    workers = FakeWorkers(placements=["w0"], scripts={})
    attempts = attempts_on(workers)
    attempts.place_ahead()
    for _ in range(10):
        await asyncio.sleep(0)
    attempts.abandon()
    assert workers.released == ["w0"] and workers.held == {}
    attempts.abandon()
    assert workers.released == ["w0"]


async def test_a_placement_in_flight_when_the_cache_answers_goes_back_once_granted() -> None:
    # Never cancelled midway: a lease granted as a cancel crossed it would be lost.
    workers = FakeWorkers(placements=["w0"], scripts={}, place_gate=asyncio.Event())
    attempts = attempts_on(workers)
    attempts.place_ahead()
    for _ in range(10):
        await asyncio.sleep(0)
    assert len(workers.asked) == 1
    attempts.abandon()
    assert workers.released == []
    assert workers.place_gate is not None
    workers.place_gate.set()
    for _ in range(10):
        await asyncio.sleep(0)
    assert not workers.place_cancelled and workers.released == ["w0"]


async def test_a_request_cancelled_while_its_placement_is_in_flight_gives_the_lease_back() -> None:
    workers = FakeWorkers(placements=["w0"], scripts={"w0": Script([last("ok")])}, place_gate=asyncio.Event())
    attempts = attempts_on(workers)
    attempts.place_ahead()

    async def consume() -> None:
        async for _ in attempts.stream(ROUTE):
            pass

    task = asyncio.create_task(consume())
    for _ in range(10):
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert workers.place_gate is not None
    workers.place_gate.set()
    for _ in range(10):
        await asyncio.sleep(0)
    assert not workers.place_cancelled and workers.released == ["w0"] and workers.held == {}


async def test_a_refused_placement_made_ahead_is_raised_only_if_the_cache_missed() -> None:
    no_worker = Unavailable("no worker serves m@1")
    hit = attempts_on(FakeWorkers(placements=[no_worker], scripts={}))
    hit.place_ahead()
    await asyncio.sleep(0)
    hit.abandon()  # no error: the cache answers
    missed = attempts_on(FakeWorkers(placements=[QueueFull("now"), QueueFull("queue full")], scripts={}))
    missed.place_ahead()
    with pytest.raises(QueueFull, match="queue full"):
        [c async for c in missed.stream(ROUTE)]
