"""The replay report's arithmetic on a small hand-made result."""

from __future__ import annotations

import pytest

from headrace.workload.replay import BatchOutcome, Outcome, ReplayResult
from headrace.workload.report import percentile, summarize, to_markdown
from headrace.workload.trace import TraceMessage, TraceRecord


def record(i: int, origin: str = "fresh") -> TraceRecord:
    return TraceRecord(
        id=f"r{i}",
        at_s=float(i),
        messages=(TraceMessage(role="user", content=f"q{i}"),),
        origin=origin,  # type: ignore[arg-type]
    )


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([], 50) is None


def test_the_summary_adds_up() -> None:
    records = [record(0), record(1, "repeat"), record(2), record(3)]
    result = ReplayResult(
        online=[
            Outcome(
                "r0", 0.0, late_s=0.001, ttft_s=0.1, total_s=0.5, cache="miss", completion_tokens=10, cost_usd=0.002
            ),
            Outcome("r1", 1.0, late_s=0.003, ttft_s=0.01, total_s=0.02, cache="hit-exact", completion_tokens=10),
            Outcome("r2", 2.0, late_s=0.002, error="ResourceExhausted"),
        ],
        batches=[BatchOutcome("batch_1", rows=1, submitted_at_s=3.0, completed=1, finished_after_s=4.5)],
        wall_s=5.0,
    )
    summary = summarize(records, result)
    online = summary["online"]
    assert online["sent"] == 3 and online["succeeded"] == 2
    assert online["errors"] == {"ResourceExhausted": 1}
    assert online["cache"] == {"miss": 1, "hit-exact": 1}
    assert online["completion_tokens"] == 20
    assert online["cost_usd"] == pytest.approx(0.002)
    # Cost per 1k over the answers served (a cache hit costs nothing and counts).
    assert online["cost_usd_per_1k"] == pytest.approx(1.0)
    assert online["ttft_s"] == {"p50": 0.01, "p99": 0.1}
    assert summary["batch"] == {"jobs": 1, "rows": 1, "completed": 1, "failed": 0, "errors": [], "last_finished_s": 4.5}
    assert summary["replay"]["late_s"]["max"] == 0.003
    assert summary["trace"]["origin"] == {"fresh": 3, "repeat": 1}
    table = to_markdown(summary)
    assert "| online sent / succeeded | 3 / 2 |" in table
    assert "ResourceExhausted 1" in table
