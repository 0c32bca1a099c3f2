"""What a replay measured, as numbers (JSON) and a table (Markdown): the
online part's latency percentiles, how answers were served (cache), what
they cost, errors by kind, the batch part's rows, and how late the replayer
sent (if it fell behind, the load was gentler than the trace)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

from headrace.workload.replay import ReplayResult
from headrace.workload.trace import TraceRecord


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0-100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q / 100.0 * len(ordered)) - 1))]


def summarize(records: Sequence[TraceRecord], result: ReplayResult) -> dict[str, Any]:
    online = result.online
    served = [o for o in online if not o.error]
    ttfts = [o.ttft_s for o in served if o.ttft_s is not None]
    totals = [o.total_s for o in served if o.total_s is not None]
    lates = [o.late_s for o in online]
    by_origin = Counter(r.origin for r in records)
    batch_rows = sum(b.rows for b in result.batches)
    cost = sum(o.cost_usd for o in served)
    return {
        "requests": len(records),
        "online": {
            "sent": len(online),
            "succeeded": len(served),
            "errors": dict(Counter(o.error for o in online if o.error)),
            "ttft_s": {"p50": percentile(ttfts, 50), "p99": percentile(ttfts, 99)},
            "total_s": {"p50": percentile(totals, 50), "p99": percentile(totals, 99)},
            "cache": dict(Counter(o.cache or "none" for o in served)),
            "completion_tokens": sum(o.completion_tokens for o in served),
            "cost_usd": cost,
            "cost_usd_per_1k": 1000.0 * cost / len(served) if served else None,
        },
        "batch": {
            "jobs": len(result.batches),
            "rows": batch_rows,
            "completed": sum(b.completed for b in result.batches),
            "failed": sum(b.failed for b in result.batches),
            "errors": [b.error for b in result.batches if b.error],
            "last_finished_s": max((b.finished_after_s or 0.0 for b in result.batches), default=None),
        },
        "trace": {"origin": dict(by_origin), "duration_s": records[-1].at_s if records else 0.0},
        "replay": {
            "wall_s": result.wall_s,
            "late_s": {"p50": percentile(lates, 50), "p99": percentile(lates, 99), "max": max(lates, default=None)},
        },
    }


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f} ms"


def to_markdown(summary: dict[str, Any]) -> str:
    online, batch, replay = summary["online"], summary["batch"], summary["replay"]
    cache = ", ".join(f"{k} {v}" for k, v in sorted(online["cache"].items())) or "-"
    errors = ", ".join(f"{k} {v}" for k, v in sorted(online["errors"].items())) or "none"
    per_1k = online["cost_usd_per_1k"]
    rows = [
        ("requests in the trace", str(summary["requests"])),
        ("online sent / succeeded", f"{online['sent']} / {online['succeeded']}"),
        ("online errors", errors),
        ("TTFT p50 / p99", f"{_ms(online['ttft_s']['p50'])} / {_ms(online['ttft_s']['p99'])}"),
        ("total p50 / p99", f"{_ms(online['total_s']['p50'])} / {_ms(online['total_s']['p99'])}"),
        ("cache outcomes", cache),
        ("cost (USD, online) / per 1k", f"{online['cost_usd']:.6f} / {'-' if per_1k is None else f'{per_1k:.6f}'}"),
        (
            "batch jobs / rows / completed / failed",
            f"{batch['jobs']} / {batch['rows']} / {batch['completed']} / {batch['failed']}",
        ),
        (
            "replayer lateness p50 / p99 / max",
            f"{_ms(replay['late_s']['p50'])} / {_ms(replay['late_s']['p99'])} / {_ms(replay['late_s']['max'])}",
        ),
        ("wall time", f"{replay['wall_s']:.1f} s"),
    ]
    lines = ["| measure | value |", "| --- | --- |"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    return "\n".join(lines) + "\n"
