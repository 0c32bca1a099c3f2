"""bench-peers' arithmetic: latency added over direct in the same
repetition, CPU per request without the backend's, and the py-spy summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.peers import PeerPath, Process, _ratios, summary, top_functions
from bench.peers_compare import compare


async def never(index: int) -> tuple[float, float]:
    raise AssertionError("not called")


def path(name: str, runs: list[dict[str, Any]]) -> PeerPath:
    return PeerPath(name, never, never, [Process(name, 0)], results=runs)


def run(rep: int, p50: float, p99: float, ttft: float, rps: float, cpu: dict[str, float]) -> dict[str, Any]:
    return {
        "rep": rep,
        "c1_p50_ms": p50,
        "c1_p99_ms": p99,
        "stream_ttft_p50_ms": ttft,
        "c32_rps": rps,
        "cpu_s_per_1k": cpu,
    }


def test_latency_is_added_over_direct_in_the_same_repetition_and_cpu_leaves_the_backend_out() -> None:
    direct = path(
        "direct", [run(0, 1.0, 2.0, 1.0, 900, {"backend": 1.0}), run(1, 3.0, 4.0, 1.0, 700, {"backend": 1.0})]
    )
    proxy = path(
        "proxy",
        [
            run(0, 2.0, 5.0, 3.0, 100, {"proxy": 4.0, "backend": 1.0}),
            run(1, 6.0, 8.0, 2.0, 300, {"proxy": 6.0, "backend": 3.0}),
        ],
    )
    rows, table = summary([direct, proxy], backend="backend")
    row = rows[1]
    assert row["added_p50_ms"] == pytest.approx((1.0 + 3.0) / 2)
    assert row["added_p99_ms"] == pytest.approx((3.0 + 4.0) / 2)
    assert row["stream_ttft_added_p50_ms"] == pytest.approx(1.5)
    assert row["c32_rps"] == pytest.approx(200)
    assert row["cpu_s_per_1k"] == pytest.approx(5.0) and row["backend_cpu_s_per_1k"] == pytest.approx(2.0)
    assert "| proxy | +2.00 / +3.50 | +1.50 | 200 | 5.00 |" in table
    assert "| direct |" not in table
    # Each repetition's own CPU total, the backend's left out.
    assert row["cpu_s_per_1k_by_rep"] == {0: pytest.approx(4.0), 1: pytest.approx(6.0)}


def test_the_cpu_ratio_is_given_per_repetition_too() -> None:
    def two(name: str, first: float, second: float) -> PeerPath:
        return path(
            name,
            [
                run(0, 2.0, 3.0, 2.0, 100, {name: first, "backend": 1.0}),
                run(1, 2.0, 3.0, 2.0, 100, {name: second, "backend": 1.0}),
            ],
        )

    direct = path("direct", [run(0, 1.0, 2.0, 1.0, 900, {}), run(1, 1.0, 2.0, 1.0, 900, {})])
    paths = [direct, two("litellm", 10.0, 8.0), two("headrace-http", 2.5, 2.4), two("headrace-grpc", 3.0, 3.2)]
    rows, _ = summary(paths, backend="backend")
    text = _ratios(rows)
    # (2.5 + 2.4) / (10 + 8) in all; 0.25 and 0.30 one repetition at a time.
    assert "headrace-http vs LiteLLM: CPU per request 0.27x (by repetition: 0.25x, 0.30x)" in text
    assert "headrace-grpc vs LiteLLM: CPU per request 0.34x (by repetition: 0.30x, 0.40x)" in text


def test_top_functions_splits_self_time_and_headrace_code(tmp_path: Path) -> None:
    collapsed = tmp_path / "router.txt"
    collapsed.write_text(
        "<module> (services/router/__main__.py:223);run (services/router/flow.py:10);loads (json/decoder.py:5) 6\n"
        "<module> (services/router/__main__.py:223);run (services/router/flow.py:10);place (headrace/x.py:3) 3\n"
        "<module> (services/router/__main__.py:223);poll (grpc.py:2) 1\n"
    )
    tops = {kind: [(frame, round(share, 6)) for frame, share in top] for kind, top in top_functions(collapsed).items()}
    assert tops["self"][0] == ("loads (json/decoder.py:5)", 0.6)
    # The entry point (__main__.py) is on every stack: left out.
    assert tops["headrace_inclusive"] == [("run (services/router/flow.py:10)", 0.9), ("place (headrace/x.py:3)", 0.3)]


def test_states_are_compared_as_ratios_to_litellm_in_the_same_run() -> None:
    def row(path: str, rps: float, cpu: float) -> dict[str, Any]:
        return {
            "path": path,
            "added_p50_ms": 1.0,
            "added_p99_ms": 2.0,
            "stream_ttft_added_p50_ms": 1.0,
            "c32_rps": rps,
            "cpu_s_per_1k": cpu,
            "cpu_s_per_1k_by_process": {"router": cpu},
        }

    results = {"summary": [row("litellm", 50, 10.0), row("headrace-http", 200, 2.5), row("headrace-grpc", 100, 5.0)]}
    table = compare([("after", results)])
    assert "| after | headrace-http | +1.00 / +2.00 | +1.00 | 200 (4.00x) | 2.50 (0.25x) | router 2.50 | 0 |" in table
    assert "| after | headrace-grpc |" in table and "100 (2.00x) | 5.00 (0.50x)" in table


def test_the_latency_plot_has_one_line_per_path_averaged_over_repetitions() -> None:
    import xml.etree.ElementTree as ET

    from bench.latency_plot import latency_cdf_svg
    from bench.peers import cdf_curves

    runs: list[dict[str, Any]] = [
        {"path": "direct", "c1_cdf_ms": [0.5, 1.0, 2.0]},
        {"path": "direct", "c1_cdf_ms": [0.7, 1.2, 4.0]},
        {"path": "litellm", "c1_cdf_ms": [9.0, 10.0, 30.0]},
        # A run recorded before the CDF was kept: left out.
        {"path": "litellm"},
    ]
    curves = cdf_curves(runs)
    assert curves == {"direct": [pytest.approx(0.6), pytest.approx(1.1), pytest.approx(3.0)], "litellm": [9, 10, 30]}
    svg = ET.fromstring(latency_cdf_svg(curves, title="a < b"))
    lines = svg.findall("{http://www.w3.org/2000/svg}polyline")
    assert len(lines) == 2
    # Three points each, from 0% (the bottom) to 100% (the top), left to right.
    points = [[tuple(map(float, p.split(","))) for p in line.get("points", "").split()] for line in lines]
    assert all(len(p) == 3 and p[0][1] > p[-1][1] and p[0][0] < p[-1][0] for p in points)
    with pytest.raises(ValueError):
        latency_cdf_svg({"direct": [1.0]}, title="one point")
