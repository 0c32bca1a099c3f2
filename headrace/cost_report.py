"""`headrace cost`: what each tenant's answers cost over a time window, per
model version, read from the Prometheus that scrapes the mesh (the router
counts cost, tokens and answers per tenant and model; Prometheus keeps
their history, so any window works)."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from headrace.runtime.errors import InvalidArgument, Unavailable

_WINDOW = re.compile(r"^[0-9]+[smhdw]$")

# Column -> the router's counter it increases.
_SERIES = {
    "answers": "headrace_router_answers_total",
    "prompt_tokens": "headrace_prompt_tokens_total",
    "completion_tokens": "headrace_completion_tokens_total",
    "engine_seconds": "headrace_engine_seconds_total",
    "usd": "headrace_cost_usd_total",
}


@dataclass
class CostRow:
    tenant: str
    model: str
    answers: float = 0.0
    prompt_tokens: float = 0.0
    completion_tokens: float = 0.0
    engine_seconds: float = 0.0
    usd: float = 0.0

    @property
    def usd_per_1k_answers(self) -> float:
        return self.usd / self.answers * 1000.0 if self.answers else 0.0

    @property
    def usd_per_1m_tokens(self) -> float:
        tokens = self.prompt_tokens + self.completion_tokens
        return self.usd / tokens * 1e6 if tokens else 0.0


def _query(prometheus_url: str, promql: str, timeout_s: float) -> list[dict[str, object]]:
    url = f"{prometheus_url.rstrip('/')}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            body = json.load(response)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise Unavailable(f"could not query Prometheus at {prometheus_url}: {exc}") from exc
    if body.get("status") != "success":
        raise Unavailable(f"Prometheus at {prometheus_url} answered: {body.get('error', body)}")
    result: list[dict[str, object]] = body["data"]["result"]
    return result


def cost_rows(prometheus_url: str, window: str, *, timeout_s: float = 10.0) -> list[CostRow]:
    """Per tenant and model, what the window's answers used and cost; most expensive first."""
    if not _WINDOW.match(window):
        raise InvalidArgument(f"window: a Prometheus duration such as 15m, 1h or 7d, got {window!r}")
    rows: dict[tuple[str, str], CostRow] = {}
    for column, series in _SERIES.items():
        for sample in _query(prometheus_url, f"sum by (tenant, model) (increase({series}[{window}]))", timeout_s):
            labels = sample["metric"]
            value = sample["value"]
            assert isinstance(labels, dict) and isinstance(value, list)
            key = (str(labels.get("tenant", "")), str(labels.get("model", "")))
            row = rows.setdefault(key, CostRow(tenant=key[0], model=key[1]))
            setattr(row, column, float(value[1]))
    return sorted(rows.values(), key=lambda r: (-r.usd, r.tenant, r.model))


def format_table(rows: list[CostRow], window: str) -> str:
    header = (
        f"{'tenant':<16} {'model':<20} {'answers':>9} {'prompt tok':>11} {'compl tok':>10} "
        f"{'engine s':>10} {'USD':>12} {'USD/1k ans':>11} {'USD/1M tok':>11}"
    )
    lines = [f"cost over the last {window} (answers started in it; Prometheus' increase())", header]
    total = CostRow(tenant="total", model="")
    for row in rows:
        lines.append(_line(row))
        for column in _SERIES:
            setattr(total, column, getattr(total, column) + getattr(row, column))
    if not rows:
        lines.append("(no answers in this window)")
    lines.append(_line(total))
    return "\n".join(lines)


def _line(row: CostRow) -> str:
    return (
        f"{row.tenant:<16} {row.model:<20} {row.answers:>9.0f} {row.prompt_tokens:>11.0f} "
        f"{row.completion_tokens:>10.0f} {row.engine_seconds:>10.3f} {row.usd:>12.6f} "
        f"{row.usd_per_1k_answers:>11.4f} {row.usd_per_1m_tokens:>11.4f}"
    )
