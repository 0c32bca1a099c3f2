"""Side by side, bench-peers results of several states of the code (each a
peers.json written by `python -m bench.peers` from that state's tree),
as ratios to LiteLLM measured in the same run:

    python -m bench.peers_compare main=a/peers.json change=b/peers.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from bench.harness import markdown_table


def compare(states: list[tuple[str, dict[str, Any]]]) -> str:
    rows: list[list[Any]] = []
    for state, results in states:
        by = {row["path"]: row for row in results["summary"]}
        litellm = by.get("litellm")
        for name in ("headrace-http", "headrace-grpc"):
            row = by[name]
            rows.append(
                [
                    state,
                    name,
                    f"+{row['added_p50_ms']:.2f} / +{row['added_p99_ms']:.2f}",
                    f"+{row['stream_ttft_added_p50_ms']:.2f}",
                    f"{row['c32_rps']:.0f}" + (f" ({row['c32_rps'] / litellm['c32_rps']:.2f}x)" if litellm else ""),
                    f"{row['cpu_s_per_1k']:.2f}"
                    + (f" ({row['cpu_s_per_1k'] / litellm['cpu_s_per_1k']:.2f}x)" if litellm else ""),
                    ", ".join(f"{n} {v:.2f}" for n, v in sorted(row["cpu_s_per_1k_by_process"].items()) if v >= 0.005),
                    row.get("errors", 0),
                ]
            )
        if litellm:
            rows.append(
                [
                    state,
                    "litellm",
                    f"+{litellm['added_p50_ms']:.2f} / +{litellm['added_p99_ms']:.2f}",
                    f"+{litellm['stream_ttft_added_p50_ms']:.2f}",
                    f"{litellm['c32_rps']:.0f}",
                    f"{litellm['cpu_s_per_1k']:.2f}",
                    "",
                    litellm.get("errors", 0),
                ]
            )
    return markdown_table(
        [
            "code",
            "path",
            "added p50 / p99 c=1 (ms)",
            "stream TTFT added (ms)",
            "req/s c=32 (x LiteLLM)",
            "CPU s / 1k (x LiteLLM)",
            "by process",
            "failed",
        ],
        rows,
    )


def main() -> None:
    states = []
    for argument in sys.argv[1:]:
        state, _, path = argument.partition("=")
        states.append((state, json.loads(Path(path).read_text())))
    print(compare(states))


if __name__ == "__main__":
    main()
