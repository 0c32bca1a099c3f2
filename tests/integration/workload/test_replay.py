"""A generated trace replayed against the mesh (synthetic engine, exact
cache on, a real batch consumer): online and batch lanes together, at the
trace's timestamps."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from headrace.client import AsyncHeadraceClient
from headrace.local.redis_server import RedisServer
from headrace.v1 import scheduler_pb2
from headrace.workload.generate import WorkloadShape, generate
from headrace.workload.replay import Replayer
from headrace.workload.report import summarize
from tests.integration.batch.conftest import batch_settings
from tests.support.batch import running_consumer
from tests.support.mesh import InProcessMesh, start_mesh

POOLS = {"smollm2": {"engine": {"kind": "synthetic", "ttft_ms": 5, "tokens_per_s": 4000}, "price_per_hour": 3.6}}
MODELS = {"smollm2": {"default_version": "1", "versions": {"1": {"pool": "smollm2"}}}}


@pytest.fixture
async def mesh(redis_server: RedisServer) -> AsyncIterator[InProcessMesh]:
    running = await start_mesh(batch_settings(redis_server.url, pools=POOLS, models=MODELS))
    yield running
    await running.close()


async def test_a_trace_replays_on_time_with_repeats_served_from_the_cache(mesh: InProcessMesh) -> None:
    shape = WorkloadShape(
        seed=11, duration_s=4.0, rate_rps=15, repeat_share=0.4, paraphrase_share=0.1, batch_share=0.15, hard_share=0.0
    )
    records = list(generate(shape))
    listing = await mesh.scheduler_stub().ListWorkers(scheduler_pb2.ListWorkersRequest(pool="smollm2"))
    async with (
        running_consumer(mesh.settings, pool="smollm2", worker_address=listing.workers[0].info.endpoint),
        AsyncHeadraceClient(mesh.router_address) as client,
    ):
        result = await Replayer(client, batch_window_s=1.0, batch_timeout_s=60).replay(records)
    summary = summarize(records, result)

    online = [r for r in records if r.lane == "online"]
    assert summary["online"]["sent"] == len(online)
    assert summary["online"]["succeeded"] == len(online), summary["online"]["errors"]
    # Sent at the trace's timestamps (the replayer keeps pace with 15/s).
    assert summary["replay"]["late_s"]["p99"] < 1.0
    # A hit answers only what was asked before word for word (a repeat, or a
    # paraphrase asked a second time); most repeats hit.
    by_id = {r.id: r for r in records}
    hits = [o for o in result.online if o.cache == "hit-exact"]
    assert hits
    for hit in hits:
        asked = by_id[hit.id]
        assert any(r.messages == asked.messages for r in online if r.at_s < asked.at_s), hit.id
    repeats = [o for o in result.online if by_id[o.id].origin == "repeat"]
    assert sum(1 for o in repeats if o.cache == "hit-exact") >= len(repeats) // 2
    assert all(o.cost_usd == 0.0 for o in hits)
    # The batch lane: every row answered, none failed.
    batch_rows = sum(1 for r in records if r.lane == "batch")
    assert summary["batch"]["rows"] == batch_rows > 0
    assert summary["batch"]["completed"] == batch_rows, result.batches


async def test_no_cache_replays_every_request_past_the_cache(mesh: InProcessMesh) -> None:
    # Repeats only: with the cache, most would hit.
    shape = WorkloadShape(
        seed=3, duration_s=1.5, rate_rps=12, repeat_share=0.6, paraphrase_share=0.0, batch_share=0.0, hard_share=0.0
    )
    records = list(generate(shape))
    async with AsyncHeadraceClient(mesh.router_address) as client:
        result = await Replayer(client, no_cache=True).replay(records)
    assert len(result.online) == len(records)
    assert not [o.error for o in result.online if o.error]
    # Neither read nor stored: no answer came from the cache.
    assert {o.cache for o in result.online} == {"bypass"}
