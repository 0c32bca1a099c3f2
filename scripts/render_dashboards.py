"""Render each Grafana dashboard in compose/grafana/dashboards as an SVG,
from a live Prometheus: every panel's queries are run over the last minutes
(query_range) and drawn as line charts, laid out as the dashboard lays them.

    python scripts/render_dashboards.py [--prometheus http://127.0.0.1:9090] [--minutes 5] [--out docs/dashboards]

For where Grafana itself cannot run (it is not in Debian): the numbers are
Prometheus', the layout and titles the dashboards' own; Grafana's styling
is not reproduced. docs/observability.md says how the shipped images were made.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
import urllib.parse
import urllib.request
from html import escape
from pathlib import Path
from typing import Any

ROOT = Path(__file__).parents[1]
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
CELL_W, CELL_H = 48, 34  # pixels per grid unit (Grafana: 24 columns, rows of 30 px)


def query_range(prometheus: str, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{prometheus}/api/v1/query_range?{params}", timeout=30) as response:
        body = json.load(response)
    result: list[dict[str, Any]] = body["data"]["result"] if body.get("status") == "success" else []
    return result


def legend(template: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template).strip() or str(labels)


def draw_panel(panel: dict[str, Any], series: list[tuple[str, list[tuple[float, float]]]], x0: int, y0: int) -> str:
    grid = panel["gridPos"]
    w, h = grid["w"] * CELL_W - 8, grid["h"] * CELL_H - 8
    plot_x, plot_y, plot_w, plot_h = x0 + 50, y0 + 26, w - 60, h - 26 - 20 - 14 * min(4, len(series))
    out = [
        f'<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="#181b1f" stroke="#2c3235"/>',
        f'<text x="{x0 + 8}" y="{y0 + 17}" fill="#d8d9da" font-size="13">{escape(panel["title"])}</text>',
    ]
    points = [p for _, values in series for p in values if math.isfinite(p[1])]
    if not points:
        out.append(f'<text x="{x0 + w / 2 - 20}" y="{y0 + h / 2}" fill="#8e8e8e" font-size="12">No data</text>')
        return "\n".join(out)
    t_min, t_max = min(p[0] for p in points), max(p[0] for p in points)
    v_min, v_max = min(0.0, min(p[1] for p in points)), max(p[1] for p in points)
    if v_max == v_min:
        v_max = v_min + 1.0
    t_span = max(1.0, t_max - t_min)
    for i in range(3):
        value = v_min + (v_max - v_min) * i / 2
        y = plot_y + plot_h - plot_h * i / 2
        out.append(f'<line x1="{plot_x}" y1="{y:.1f}" x2="{plot_x + plot_w}" y2="{y:.1f}" stroke="#2c3235"/>')
        out.append(f'<text x="{x0 + 4}" y="{y + 4:.1f}" fill="#8e8e8e" font-size="10">{value:.3g}</text>')
    for index, (name, values) in enumerate(series):
        color = COLORS[index % len(COLORS)]
        v_span = v_max - v_min
        path = " ".join(
            f"{plot_x + plot_w * (t - t_min) / t_span:.1f},{plot_y + plot_h - plot_h * (v - v_min) / v_span:.1f}"
            for t, v in values
            if math.isfinite(v)
        )
        out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="1.5"/>')
        if index < 4:
            ly = plot_y + plot_h + 16 + 14 * index
            out.append(f'<rect x="{plot_x}" y="{ly - 8}" width="10" height="3" fill="{color}"/>')
            out.append(f'<text x="{plot_x + 14}" y="{ly}" fill="#d8d9da" font-size="10">{escape(name[:80])}</text>')
    return "\n".join(out)


def render(dashboard: dict[str, Any], prometheus: str, minutes: float) -> str:
    end = time.time()
    start, step = end - minutes * 60, max(5.0, minutes * 60 / 120)
    width = 24 * CELL_W
    height = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in dashboard["panels"]) * CELL_H + 40
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif">',
        f'<rect width="{width}" height="{height}" fill="#111217"/>',
        f'<text x="8" y="24" fill="#d8d9da" font-size="18">{escape(dashboard["title"])} (last {minutes:g} min)</text>',
    ]
    for panel in dashboard["panels"]:
        series = []
        for target in panel.get("targets", []):
            expr = target["expr"].replace('=~"$pool"', '=~".*"')
            for result in query_range(prometheus, expr, start, end, step):
                values = [(float(t), float(v)) for t, v in result["values"]]
                series.append((legend(target.get("legendFormat", ""), result["metric"]), values))
        grid = panel["gridPos"]
        parts.append(draw_panel(panel, series, grid["x"] * CELL_W + 4, grid["y"] * CELL_H + 40))
    parts.append("</svg>")
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090")
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboards")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for path in sorted((ROOT / "compose" / "grafana" / "dashboards").glob("*.json")):
        dashboard = json.loads(path.read_text())
        target = args.out / f"{path.stem}.svg"
        target.write_text(render(dashboard, args.prometheus.rstrip("/"), args.minutes))
        print(f"wrote {target}")


if __name__ == "__main__":
    main()
