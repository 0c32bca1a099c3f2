"""The main job: `headrace up` on the embedded default serves a real model
(SmolLM2-135M-Instruct through vLLM on this CPU, all-MiniLM-L6-v2 for
embeddings, semantic cache on), and every path reaches the engine."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from headrace.client import HeadraceClient
from headrace.runtime.errors import NotFound
from headrace.v1 import batch_pb2, generation_pb2, scheduler_pb2, scheduler_pb2_grpc
from tests.support.batch import TERMINAL, chat_rows
from tests.support.cli import headrace, live_processes_in_groups, mesh_env

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    env = mesh_env(tmp_path_factory.mktemp("real-mesh") / "state")
    prepare = headrace(env, "models", "prepare", timeout=600)
    assert prepare.returncode == 0, prepare.stdout + prepare.stderr
    try:
        # An `up` that runs past its timeout is killed, but the services it
        # started (each in its own session) are not: `down` stops them.
        up = headrace(env, "up", "--detach", timeout=900)
        assert up.returncode == 0, up.stdout + up.stderr
        yield env
    finally:
        headrace(env, "down", timeout=120)


def router(env: dict[str, str]) -> HeadraceClient:
    return HeadraceClient(f"127.0.0.1:{env['HEADRACE_ROUTER__PORT']}")


def test_the_default_mesh_runs_real_engines(real_mesh: dict[str, str]) -> None:
    listing = headrace(real_mesh, "models", "list")
    assert listing.returncode == 0, listing.stderr
    assert "smollm2@1" in listing.stdout and "(vllm) ready 1" in listing.stdout
    assert "(embeddings) ready 1" in listing.stdout


def test_generate_streams_real_tokens(real_mesh: dict[str, str]) -> None:
    streamed = headrace(real_mesh, "generate", "What is the capital of France?", "--stream", "--max-tokens", "24")
    assert streamed.returncode == 0, streamed.stderr
    assert streamed.stdout.strip(), "the model said nothing"
    assert "smollm2@1" in streamed.stderr and "ttft" in streamed.stderr
    with router(real_mesh) as client:
        deltas = list(
            client.generate_stream(
                messages=[{"role": "user", "content": "Count from one to five."}], max_tokens=16, temperature=0.0
            )
        )
        # Real token ids, one engine step per delta, usage on the last.
        assert sum(len(d.token_ids) for d in deltas) == deltas[-1].usage.completion_tokens
        assert deltas[-1].usage.prompt_tokens > 5
        assert deltas[-1].finish_reason in (generation_pb2.FINISH_REASON_STOP, generation_pb2.FINISH_REASON_LENGTH)
        assert deltas[-1].cost.usd > 0
        again = client.generate(
            messages=[{"role": "user", "content": "Count from one to five."}], max_tokens=16, temperature=0.0
        )
        assert again.route.cache == generation_pb2.CACHE_OUTCOME_HIT_EXACT
        assert again.text == "".join(d.text for d in deltas)
        with pytest.raises(NotFound):
            client.generate("x", model="gpt-9")


def test_embed_uses_minilm(real_mesh: dict[str, str]) -> None:
    embedded = headrace(real_mesh, "embed", "a cat sat on the mat", "a kitten sat on the rug", "stock prices fell")
    assert embedded.returncode == 0, embedded.stderr
    cat, kitten, stocks = json.loads(embedded.stdout)
    assert len(cat) == 384

    def dot(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))

    assert dot(cat, kitten) > dot(cat, stocks) + 0.2


def test_a_cancelled_stream_frees_the_engine_sequence(real_mesh: dict[str, str]) -> None:
    with router(real_mesh) as client:
        stream = client.generate_stream("Write a long story about a river.", max_tokens=512, no_cache=True)
        next(stream)
        stream.close()  # cancels the call
    scheduler = f"127.0.0.1:{real_mesh['HEADRACE_SCHEDULER__PORT']}"
    with grpc.insecure_channel(scheduler) as channel:
        stub = scheduler_pb2_grpc.SchedulerStub(channel)
        deadline = time.monotonic() + 5.0
        while True:
            workers = stub.ListWorkers(scheduler_pb2.ListWorkersRequest(pool="smollm2")).workers
            # The engine's own count, as its worker last reported it (every 0.5 s).
            if workers and workers[0].load.running == 0 and workers[0].leases == 0:
                break
            assert time.monotonic() < deadline, f"the engine still runs the sequence: {workers}"
            time.sleep(0.1)


def _leased(stub: scheduler_pb2_grpc.SchedulerStub) -> int:
    status = stub.GetPoolStatus(scheduler_pb2.GetPoolStatusRequest(pool="smollm2"))
    return status.pools[0].leased if status.pools else 0


def test_online_work_takes_the_pool_back_from_a_batch_on_the_embedded_default(real_mesh: dict[str, str]) -> None:
    """The embedded CPU pool's scheduling (online_preempts_batch, a batch
    share of 1/16 while online work is around) reaches the scheduler and
    the worker that `headrace up` starts: once online requests come, the
    batch's leases drop from the whole pool to its share (the worker stops
    rows beyond it), and the job still ends with every row answered once."""
    scheduler = f"127.0.0.1:{real_mesh['HEADRACE_SCHEDULER__PORT']}"
    with router(real_mesh) as client, grpc.insecure_channel(scheduler) as channel:
        stub = scheduler_pb2_grpc.SchedulerStub(channel)
        job = client.submit_batch(chat_rows(400, max_tokens=24, ignore_eos=True))
        deadline = time.monotonic() + 60.0
        while _leased(stub) < 32:
            assert time.monotonic() < deadline, "the batch never took the pool"
            time.sleep(0.05)
        # Online requests one after another for a few seconds; the batch's
        # share while they are around is 64 / 16 = 4 leases (plus one online).
        fewest = 1_000
        online_until = time.monotonic() + 4.0
        answered = 0
        while time.monotonic() < online_until:
            for _delta in client.generate_stream(
                f"Online question {answered}: name a river.", max_tokens=8, no_cache=True, priority="interactive"
            ):
                fewest = min(fewest, _leased(stub))
            answered += 1
            fewest = min(fewest, _leased(stub))
        assert answered >= 2
        assert fewest <= 4 + 1, f"the batch kept {fewest} leases while online work was around"
        deadline = time.monotonic() + 180.0
        while (current := client.get_batch(job.id)).status not in TERMINAL:
            assert time.monotonic() < deadline, f"the job did not end: {current}"
            time.sleep(0.5)
        assert current.status == batch_pb2.BATCH_STATUS_COMPLETED, current
        results = list(client.batch_results(job.id))
    assert sorted(r.custom_id for r in results) == sorted(f"row-{i}" for i in range(400))
    assert all(r.WhichOneof("outcome") == "response" for r in results), [r for r in results if r.HasField("error")][:3]
    consumer_logs = "".join(p.read_text() for p in (Path(real_mesh["HEADRACE_STATE_DIR"]) / "logs").glob("*batch*"))
    assert "preempted for online work" in consumer_logs


def test_down_leaves_nothing_behind(real_mesh: dict[str, str]) -> None:
    state = json.loads((Path(real_mesh["HEADRACE_STATE_DIR"]) / "mesh.json").read_text())
    pgids = {p["pid"] for p in state["processes"]}
    down = headrace(real_mesh, "down")
    assert down.returncode == 0 and "stopped" in down.stdout
    # vLLM's engine-core processes live in the worker's process group.
    assert live_processes_in_groups(pgids) == []
