"""The shipped alert rules keep their promises: the SLO rules are what
compose/prometheus/slo_rules.py generates, every alert links a runbook that
exists, and every alert has a promtool unit test in which it fires. The promtool
tests themselves run in `make check-monitoring` (part of `make test`)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import yaml

ROOT = Path(__file__).parents[2]
PROMETHEUS = ROOT / "compose" / "prometheus"


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("slo_rules", PROMETHEUS / "slo_rules.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def alerts() -> list[dict[str, object]]:
    found: list[dict[str, object]] = []
    for path in sorted((PROMETHEUS / "rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            found.extend(rule for rule in group["rules"] if "alert" in rule)
    return found


def test_the_slo_rules_and_their_tests_are_what_the_generator_writes() -> None:
    slo_rules = generator()
    assert (PROMETHEUS / "rules" / "slo.yml").read_text() == slo_rules.render(), "run compose/prometheus/slo_rules.py"
    fast, slow = slo_rules.render_tests()
    assert (PROMETHEUS / "tests" / "slo_fast_burn_test.yml").read_text() == fast
    assert (PROMETHEUS / "tests" / "slo_slow_burn_test.yml").read_text() == slow


def test_every_slo_has_a_fast_and_a_slow_burn_alert() -> None:
    names = {str(rule["alert"]) for rule in alerts()}
    for sli in ("Availability", "Ttft", "Tpot", "QueueWait", "Cache"):
        assert {f"Headrace{sli}BudgetBurnFast", f"Headrace{sli}BudgetBurnSlow"} <= names


def test_every_alert_links_a_runbook_that_exists() -> None:
    for rule in alerts():
        annotations = rule["annotations"]
        assert isinstance(annotations, dict)
        runbook = ROOT / str(annotations["runbook_url"])
        assert runbook.is_file(), f"{rule['alert']}: {runbook} is missing"
        # The runbook names the alert, so a search from the page finds it.
        assert str(rule["alert"]) in runbook.read_text(), f"{runbook.name} does not mention {rule['alert']}"


def test_every_alert_fires_in_some_unit_test() -> None:
    fired: set[str] = set()
    for path in (PROMETHEUS / "tests").glob("*.yml"):
        for case in yaml.safe_load(path.read_text())["tests"]:
            fired.update(t["alertname"] for t in case.get("alert_rule_test", []) if t["exp_alerts"])
    assert {str(rule["alert"]) for rule in alerts()} <= fired
