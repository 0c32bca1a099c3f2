"""A latency CDF as a small SVG (no plotting library): one line per path,
latency on a log scale (the paths span a direct backend's half a
millisecond to a proxy's tens), the share of requests answered by then
upward. bench-peers draws its one-request-at-a-time latencies with it."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from xml.sax.saxutils import escape

# Line colours, in the order the paths come.
_COLOURS = ("#718096", "#dd6b20", "#2b6cb0", "#38a169", "#805ad5", "#e53e3e")


def latency_cdf_svg(curves: Mapping[str, Sequence[float]], *, title: str) -> str:
    """`curves`: per path, latencies (ms) at evenly spaced percentiles from
    0 to 100 (21 points: every 5%)."""
    if not curves or any(len(points) < 2 for points in curves.values()):
        raise ValueError("every curve needs two points or more")
    values = [v for points in curves.values() for v in points if v > 0]
    if not values:
        raise ValueError("no positive latency to plot")
    width, height, left, right, top, bottom = 760, 420, 60, 180, 40, 50
    low = 10.0 ** math.floor(math.log10(min(values)))
    high = 10.0 ** math.ceil(math.log10(max(values)))
    span = math.log10(high) - math.log10(low)

    def x(ms: float) -> float:
        return left + (width - left - right) * (math.log10(max(ms, low)) - math.log10(low)) / span

    def y(share: float) -> float:
        return top + (height - top - bottom) * (1.0 - share)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="22" font-size="14" font-weight="bold">{escape(title)}</text>',
    ]
    decade = low
    while decade <= high * 1.0001:
        for multiple in (1, 2, 5):
            tick = decade * multiple
            if tick > high * 1.0001:
                break
            px = x(tick)
            parts.append(f'<line x1="{px:.1f}" y1="{top}" x2="{px:.1f}" y2="{height - bottom}" stroke="#e2e8f0"/>')
            parts.append(
                f'<text x="{px:.1f}" y="{height - bottom + 16}" text-anchor="middle" fill="#555">{tick:g}</text>'
            )
        decade *= 10
    for share in (0.0, 0.25, 0.5, 0.75, 0.9, 1.0):
        py = y(share)
        parts.append(f'<line x1="{left}" y1="{py:.1f}" x2="{width - right}" y2="{py:.1f}" stroke="#e2e8f0"/>')
        parts.append(f'<text x="{left - 6}" y="{py + 4:.1f}" text-anchor="end" fill="#555">{share:.0%}</text>')
    for index, (name, points) in enumerate(curves.items()):
        colour = _COLOURS[index % len(_COLOURS)]
        spacing = 1.0 / (len(points) - 1)
        line = " ".join(f"{x(ms):.1f},{y(i * spacing):.1f}" for i, ms in enumerate(points))
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{line}"/>')
        ly = top + 16 + index * 18
        parts.append(
            f'<line x1="{width - right + 14}" y1="{ly - 4}" x2="{width - right + 34}" y2="{ly - 4}" '
            f'stroke="{colour}" stroke-width="3"/>'
        )
        parts.append(f'<text x="{width - right + 40}" y="{ly}">{escape(name)}</text>')
    parts.append(
        f'<text x="{left}" y="{height - 8}" fill="#555">ms per request, one at a time (log scale); '
        "share of requests answered by then</text>"
    )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
