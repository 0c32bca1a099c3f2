"""Writes rules/slo.yml: the SLIs of docs/slo.md as recording rules, and
multiwindow, multi-burn-rate alerts on them (Google's SRE workbook,
"Alerting on SLOs", recommendation 6).

    python compose/prometheus/slo_rules.py        # rewrite rules/slo.yml

Generated, so the five SLIs keep one shape: for each, the error ratio over
7 windows (`headrace:slo_<sli>:error_ratio_rate<window>`), and two alerts:

- `Headrace<Sli>BudgetBurnFast` (severity page): the 1 h and 5 m ratios above
  14.4x the budget (2% of a 30-day budget in an hour), or the 6 h and 30 m
  ratios above 6x (5% in six hours);
- `Headrace<Sli>BudgetBurnSlow` (severity ticket): 1 d and 2 h above 3x
  (10% in a day), or 3 d and 6 h above 1x (10% in three days).

The short window makes an alert stop soon after the burning does. Unit
tests of every alert: tests/slo_{fast,slow}_burn_test.yml (`promtool test rules`,
run by `make check-monitoring`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")
# (long window, short window, burn-rate factor) per alert severity.
FAST = (("1h", "5m", 14.4), ("6h", "30m", 6.0))
SLOW = (("1d", "2h", 3.0), ("3d", "6h", 1.0))
# The two rule groups; promtool unit tests must evaluate them in this order.
RECORDING_GROUP = "headrace-slo-recording"
ALERT_GROUP = "headrace-slo-alerts"

# Online calls of the public API: gRPC Router RPCs and their HTTP routes.
_GRPC_ONLINE = 'method=~"/headrace.v1.Router/(Generate|GenerateStream|Embed)"'
# Codes that are the mesh's fault; client errors (INVALID_ARGUMENT,
# NOT_FOUND, UNAUTHENTICATED, RESOURCE_EXHAUSTED, CANCELLED, ...) are not.
_GRPC_SERVER_FAULT = 'code=~"UNAVAILABLE|INTERNAL|UNKNOWN|DEADLINE_EXCEEDED|DATA_LOSS|UNIMPLEMENTED"'
_HTTP_ONLINE = 'route=~"/v1/(chat/completions|completions|embeddings)"'


@dataclass(frozen=True)
class Sli:
    name: str  # in recorded series' names: headrace:slo_<name>:...
    title: str  # in alert names: Headrace<Title>BudgetBurn...
    label: str  # in alert summaries
    objective: float  # share of good events, e.g. 0.999
    what: str  # the objective in words, for the alert's summary
    runbook: str  # docs/runbooks/<runbook>.md
    # Bad events and all events per second, as PromQL with WINDOW for the
    # range; the error ratio is their quotient.
    bad: str
    total: str

    def ratio(self, window: str) -> str:
        return f"({self.bad})\n/\n({self.total})".replace(WINDOW, window)


WINDOW = "WINDOW"


def _latency(series: str, selector: str, le: str) -> tuple[str, str]:
    """Bad: observations above `le` (all minus the bucket); total: all."""
    count = f"sum(rate({series}_count{{{selector}}}[WINDOW]))"
    bucket_selector = f'{selector},le="{le}"' if selector else f'le="{le}"'
    return f"{count} - sum(rate({series}_bucket{{{bucket_selector}}}[WINDOW]))", count


def _or_zero(expr: str) -> str:
    # A series no service has sampled yet counts as 0, not as "no data".
    return f"({expr} or vector(0))"


_ttft_bad, _ttft_total = _latency("headrace_router_ttft_seconds", "", "2.5")
_tpot_bad, _tpot_total = _latency("headrace_router_tpot_seconds", "", "0.1")
_queue_bad, _queue_total = _latency("headrace_scheduler_queue_wait_seconds", 'priority!="batch"', "1")
# Online requests the scheduler turned away for want of capacity count as bad.
_REJECTED = _or_zero(
    'sum(rate(headrace_scheduler_rejections_total{priority!="batch",reason=~"queue_full|deadline|max_wait"}[WINDOW]))'
)
_GRPC_CALLS = f"sum(rate(headrace_grpc_server_handled_total{{{_GRPC_ONLINE}}}[WINDOW]))"
_GRPC_FAULTS = f"sum(rate(headrace_grpc_server_handled_total{{{_GRPC_ONLINE},{_GRPC_SERVER_FAULT}}}[WINDOW]))"
_HTTP_CALLS = f"sum(rate(headrace_http_requests_total{{{_HTTP_ONLINE}}}[WINDOW]))"
_HTTP_FAULTS = f'sum(rate(headrace_http_requests_total{{{_HTTP_ONLINE},status=~"5.."}}[WINDOW]))'
# A stream that failed after its 200 headers were sent.
_HTTP_STREAMS_FAILED = 'sum(rate(headrace_http_streams_total{outcome="failed"}[WINDOW]))'

SLIS = (
    Sli(
        name="availability",
        title="Availability",
        label="Availability",
        objective=0.999,
        what="99.9% of online calls (gRPC and HTTP) end without a server-side error",
        runbook="errors-rising",
        bad=" + ".join(_or_zero(e) for e in (_GRPC_FAULTS, _HTTP_FAULTS, _HTTP_STREAMS_FAILED)),
        total=" + ".join(_or_zero(e) for e in (_GRPC_CALLS, _HTTP_CALLS)),
    ),
    Sli(
        name="ttft",
        title="Ttft",
        label="Time to first token",
        objective=0.99,
        what="99% of answers start (first token) within 2.5 s",
        runbook="high-ttft",
        bad=_ttft_bad,
        total=_ttft_total,
    ),
    Sli(
        name="tpot",
        title="Tpot",
        label="Time per output token",
        objective=0.99,
        what="99% of answers stream at 100 ms per token or faster after the first",
        runbook="slow-decode",
        bad=_tpot_bad,
        total=_tpot_total,
    ),
    Sli(
        name="queue_wait",
        title="QueueWait",
        label="Queue wait",
        objective=0.99,
        what="99% of online requests get a worker within 1 s, none turned away for capacity",
        runbook="queue-wait",
        bad=f"({_queue_bad}) + {_REJECTED}",
        total=f"({_queue_total}) + {_REJECTED}",
    ),
    Sli(
        name="cache",
        title="Cache",
        label="Cache lookups",
        objective=0.99,
        what="99% of cache lookups answer in time (a failed or late lookup is bypassed: the engine does the work)",
        runbook="cache-degraded",
        bad=_or_zero('sum(rate(headrace_router_cache_errors_total{op="lookup"}[WINDOW]))'),
        total="sum(rate(headrace_router_cache_total[WINDOW]))",
    ),
)


def recording_rules(sli: Sli) -> list[dict[str, object]]:
    return [{"record": f"headrace:slo_{sli.name}:error_ratio_rate{w}", "expr": sli.ratio(w)} for w in WINDOWS]


def _burn(sli: Sli, windows: tuple[tuple[str, str, float], ...]) -> str:
    budget = round(1.0 - sli.objective, 6)
    parts = []
    for long, short, factor in windows:
        threshold = f"({factor} * {budget})"
        parts.append(
            f"(headrace:slo_{sli.name}:error_ratio_rate{long} > {threshold}\n"
            f" and headrace:slo_{sli.name}:error_ratio_rate{short} > {threshold})"
        )
    return "\nor\n".join(parts)


def alerts(sli: Sli) -> list[dict[str, object]]:
    result: list[dict[str, object]] = []
    for speed, severity, windows, spent in (
        ("Fast", "page", FAST, "2% of the 30-day error budget in 1 h (or 5% in 6 h)"),
        ("Slow", "ticket", SLOW, "10% of the 30-day error budget in 1 d (or in 3 d)"),
    ):
        result.append(
            {
                "alert": f"Headrace{sli.title}BudgetBurn{speed}",
                "expr": _burn(sli, windows),
                "labels": {"severity": severity, "slo": sli.name},
                "annotations": _annotations(sli, speed, spent),
            }
        )
    return result


def _annotations(sli: Sli, speed: str, spent: str) -> dict[str, str]:
    return {
        "summary": f"{sli.label}: error budget burning {'fast' if speed == 'Fast' else 'steadily'}",
        "description": (
            f"SLO: {sli.what}. The error budget is burning at a pace that spends {spent}; "
            f"the error ratio per window is headrace:slo_{sli.name}:error_ratio_rate<window>."
        ),
        "runbook_url": f"docs/runbooks/{sli.runbook}.md",
    }


def rules() -> dict[str, object]:
    return {
        "groups": [
            {"name": RECORDING_GROUP, "rules": [r for sli in SLIS for r in recording_rules(sli)]},
            {"name": ALERT_GROUP, "rules": [a for sli in SLIS for a in alerts(sli)]},
        ]
    }


class _Dumper(yaml.SafeDumper):
    pass


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    # Expressions over several lines read as written: block style.
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _text)


def render() -> str:
    header = "# Generated by compose/prometheus/slo_rules.py (edit that, then run it). See docs/slo.md.\n"
    return header + yaml.dump(rules(), Dumper=_Dumper, sort_keys=False, width=200)


# promtool unit tests: for each SLI, counters made of the metrics the
# services export, each a rate per minute given the bad events in 1000.
Counters = list[tuple[str, Callable[[float], float]]]


def _availability_series() -> Counters:
    # Half the faults on gRPC, half on HTTP; client errors and routes that
    # are not online calls never count as faults.
    grpc = 'headrace_grpc_server_handled_total{method="/headrace.v1.Router/Generate",code="%s"}'
    http = 'headrace_http_requests_total{route="%s",method="POST",status="%s"}'
    return [
        (grpc % "OK", lambda bad: 450 - bad / 2),
        (grpc % "UNAVAILABLE", lambda bad: bad / 2),
        (grpc % "INVALID_ARGUMENT", lambda bad: 50),
        (http % ("/v1/chat/completions", "200"), lambda bad: 450 - bad / 2),
        (http % ("/v1/chat/completions", "503"), lambda bad: bad / 2),
        (http % ("/v1/chat/completions", "400"), lambda bad: 50),
        (http % ("/v1/files", "500"), lambda bad: 1000),
    ]


def _latency_series(series: str, le: str, labels: str) -> Callable[[], Counters]:
    def build() -> Counters:
        return [
            (f"{series}_count{{{labels}}}", lambda bad: 1000),
            (f'{series}_bucket{{{labels},le="{le}"}}', lambda bad: 1000 - bad),
            (f'{series}_bucket{{{labels},le="+Inf"}}', lambda bad: 1000),
        ]

    return build


def _queue_series() -> Counters:
    # Half slow placements, half turned away; batch work never counts.
    wait = "headrace_scheduler_queue_wait_seconds"
    online, batch = 'pool="p",priority="interactive"', 'pool="p",priority="batch"'
    return [
        (f"{wait}_count{{{online}}}", lambda bad: 1000 - bad / 2),
        (f'{wait}_bucket{{{online},le="1"}}', lambda bad: 1000 - bad),
        (f"{wait}_count{{{batch}}}", lambda bad: 1000),
        (f'{wait}_bucket{{{batch},le="1"}}', lambda bad: 0),
        (f'headrace_scheduler_rejections_total{{{online},reason="queue_full"}}', lambda bad: bad / 2),
        (f'headrace_scheduler_rejections_total{{{batch},reason="queue_full"}}', lambda bad: 1000),
    ]


def _cache_series() -> Counters:
    return [
        ('headrace_router_cache_total{outcome="miss"}', lambda bad: 500),
        ('headrace_router_cache_total{outcome="bypass"}', lambda bad: 500),
        ('headrace_router_cache_errors_total{op="lookup",code="DEADLINE_EXCEEDED"}', lambda bad: bad),
        # A failed store costs the request nothing: not in the ratio.
        ('headrace_router_cache_errors_total{op="store",code="UNAVAILABLE"}', lambda bad: 1000),
    ]


SERIES: dict[str, Callable[[], Counters]] = {
    "availability": _availability_series,
    "ttft": _latency_series("headrace_router_ttft_seconds", "2.5", 'model="m@1"'),
    "tpot": _latency_series("headrace_router_tpot_seconds", "0.1", 'model="m@1"'),
    "queue_wait": _queue_series,
    "cache": _cache_series,
}


def _input_series(sli: Sli, bad: float, *, healthy_steps: int, burning_steps: int) -> list[dict[str, str]]:
    """Healthy (no bad events) for a while, then `bad` in 1000 per minute."""
    result = []
    for series, per_minute in SERIES[sli.name]():
        healthy, burning = per_minute(0.0), per_minute(bad)
        values = f"0+{healthy:g}x{healthy_steps} {healthy * (healthy_steps + 1):g}+{burning:g}x{burning_steps}"
        result.append({"series": series, "values": values})
    return result


def _expected(sli: Sli, speed: str) -> dict[str, object]:
    (alert,) = [a for a in alerts(sli) if str(a["alert"]).endswith(speed)]
    return {"exp_labels": alert["labels"], "exp_annotations": alert["annotations"]}


def _all_series(budgets: float, *, healthy_steps: int, burning_steps: int) -> list[dict[str, str]]:
    """Every SLI's series in one test (their metrics are disjoint), each
    burning `budgets` times its own error budget."""
    return [
        series
        for sli in SLIS
        for series in _input_series(
            sli, budgets * (1.0 - sli.objective) * 1000, healthy_steps=healthy_steps, burning_steps=burning_steps
        )
    ]


def _checks(eval_time: str, speed: str, fires: bool) -> list[dict[str, object]]:
    return [
        {
            "eval_time": eval_time,
            "alertname": f"Headrace{sli.title}BudgetBurn{speed}",
            "exp_alerts": [_expected(sli, speed)] if fires else [],
        }
        for sli in SLIS
    ]


def unit_tests() -> tuple[dict[str, object], dict[str, object]]:
    """Two files: minutes at a 1 m step (fast burns), a day at a 10 m step
    and 30 m evaluations (slow burns; a 1 m step over a day takes promtool
    minutes)."""
    fast_tests = [
        {
            # Healthy for 30 minutes, then 20x the budget: a page within the
            # hour, not at the first bad minute.
            "interval": "1m",
            "input_series": _all_series(20, healthy_steps=30, burning_steps=45),
            "alert_rule_test": [
                *_checks("29m", "Fast", fires=False),
                *_checks("32m", "Fast", fires=False),
                *_checks("1h10m", "Fast", fires=True),
            ],
        },
        {
            # 4x the budget for an hour: not a page.
            "interval": "1m",
            "input_series": _all_series(4, healthy_steps=0, burning_steps=75),
            "alert_rule_test": _checks("1h10m", "Fast", fires=False),
        },
    ]
    slow_tests = [
        {
            # 4x the budget for a day: a ticket.
            "interval": "10m",
            "input_series": _all_series(4, healthy_steps=0, burning_steps=150),
            "alert_rule_test": _checks("1d", "Slow", fires=True),
        },
        {
            # Half the budget for a day: quiet.
            "interval": "10m",
            "input_series": _all_series(0.5, healthy_steps=0, burning_steps=150),
            "alert_rule_test": [*_checks("1d", "Slow", fires=False), *_checks("1d", "Fast", fires=False)],
        },
    ]
    # promtool orders groups at random unless told (it sorts them by this
    # list, an unstable sort); the alerts read the recording rules, and at a
    # 30 m step a record from the previous step is past the 5 m lookback, so
    # recording must come first or an alert sees nothing half the time.
    common = {"rule_files": ["../rules/slo.yml"], "group_eval_order": [RECORDING_GROUP, ALERT_GROUP]}
    return (
        {**common, "evaluation_interval": "1m", "tests": fast_tests},
        {**common, "evaluation_interval": "30m", "tests": slow_tests},
    )


def render_tests() -> tuple[str, str]:
    header = "# Generated by compose/prometheus/slo_rules.py. Run: promtool test rules compose/prometheus/tests/*.yml\n"
    fast, slow = unit_tests()
    return tuple(header + yaml.dump(t, Dumper=_Dumper, sort_keys=False, width=200) for t in (fast, slow))  # type: ignore[return-value]


if __name__ == "__main__":
    here = Path(__file__).parent
    fast_tests, slow_tests = render_tests()
    for target, text in (
        (here / "rules" / "slo.yml", render()),
        (here / "tests" / "slo_fast_burn_test.yml", fast_tests),
        (here / "tests" / "slo_slow_burn_test.yml", slow_tests),
    ):
        target.write_text(text)
        sys.stdout.write(f"wrote {target}\n")
