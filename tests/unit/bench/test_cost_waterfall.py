"""bench-cost's arithmetic on a tiny made-up run (the run itself needs vLLM)."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import pytest

from bench.cost_waterfall import (
    NAIVE_MIN_CPU_SHARE,
    Stage,
    cost_usd,
    cpu_share,
    differ_share,
    per_1k,
    single_server_starts,
    speed_drift,
    speed_note,
    tpot_s,
    waterfall,
    waterfall_svg,
)


def test_cost_is_busy_seconds_times_cores_times_price() -> None:
    # 3600 busy seconds of a 2-core worker at 0.09 USD per core-hour.
    assert cost_usd(3600.0, cores=2, price_per_core_hour=0.09) == pytest.approx(0.18)
    assert per_1k(0.18, 200) == pytest.approx(0.9)
    assert math.isnan(per_1k(1.0, 0))


def test_a_stage_costs_add_up_over_its_pools() -> None:
    # Two one-core pools, 1800 s and 900 s busy; 0.09 USD per core-hour.
    stage = Stage(
        key="d",
        label="routing",
        requests=100,
        worker_seconds={"smollm2": 1800.0, "smollm2-q8": 900.0},
        cores_per_worker={"smollm2": 1, "smollm2-q8": 1},
    )
    assert stage.usd == pytest.approx(0.045 + 0.0225)
    assert stage.usd_per_1k == pytest.approx(10 * 0.0675)


def test_waterfall_steps_and_ratios_against_naive() -> None:
    def stage(key: str, busy_s: float, cores: int) -> Stage:
        return Stage(key=key, label=key, requests=1000, worker_seconds={"w": busy_s}, cores_per_worker={"w": cores})

    # Naive: 4000 s on 2 cores = 8000 core-s; then 400, 200, 100 core-s.
    rows = waterfall([stage("a", 4000.0, 2), stage("b", 400.0, 1), stage("c", 200.0, 1), stage("e", 100.0, 1)])
    price = 0.09 / 3600.0
    assert [r["usd_per_1k"] for r in rows] == pytest.approx([8000 * price, 400 * price, 200 * price, 100 * price])
    assert [r["naive_over_this"] for r in rows] == pytest.approx([1.0, 20.0, 40.0, 80.0])
    assert [r["step_ratio"] for r in rows] == pytest.approx([1.0, 20.0, 2.0, 2.0])
    # The steps add up to the whole saving.
    assert sum(r["step_usd_per_1k"] for r in rows) == pytest.approx(rows[0]["usd_per_1k"] - rows[-1]["usd_per_1k"])


def test_one_server_queues_requests_in_arrival_order() -> None:
    # Arrivals at 0, 1, 1.5 and 10 s, each taking 2 s: the second and third wait.
    assert single_server_starts([0.0, 1.0, 1.5, 10.0], [2.0, 2.0, 2.0, 2.0]) == [0.0, 2.0, 4.0, 10.0]
    with pytest.raises(ValueError):
        single_server_starts([0.0], [1.0, 2.0])


def test_tpot_counts_tokens_after_the_first() -> None:
    assert tpot_s(1.0, 0.2, 9) == pytest.approx(0.1)
    assert tpot_s(1.0, 0.2, 1) is None


def test_differ_share_compares_only_ids_on_both_sides() -> None:
    reference = {"r1": "Yes.", "r2": "No.", "r3": "Maybe."}
    share, compared = differ_share({"r1": " Yes.\n", "r2": "Nope.", "r9": "x"}, reference)
    assert (share, compared) == (0.5, 2)
    assert differ_share({"r9": "x"}, reference) == (None, 0)


def test_the_plot_is_svg_with_one_bar_per_stage_and_the_savings() -> None:
    svg = waterfall_svg(["(a) naive", "(b) <batching>", "(e) all"], [0.06, 0.004, 0.001], title="t & t")
    root = ET.fromstring(svg)
    rects = [el for el in root.iter() if el.tag.endswith("rect")]
    # Background, 3 cost bars, 2 savings.
    assert len(rects) == 6
    texts = "".join(el.text or "" for el in root.iter() if el.tag.endswith("text"))
    assert "(b) <batching>" in texts and "t & t" in texts


def test_the_report_names_the_repeat_setting_it_ran() -> None:
    from bench.cost_waterfall import repeat_setting

    assert repeat_setting(0.30).startswith("the low setting")
    assert repeat_setting(0.40).startswith("the middle setting")
    assert repeat_setting(0.60).startswith("the high setting")


def test_the_naive_deploys_cpu_share_is_cpu_seconds_over_what_it_is_priced_at() -> None:
    # 100 busy seconds on 2 cores are priced as 200 core-seconds.
    quiet = Stage(
        key="a", label="naive", requests=10, worker_seconds={"t": 100.0}, cores_per_worker={"t": 2}, engine_cpu_s=196.0
    )
    assert cpu_share(quiet) == pytest.approx(0.98)
    # Slowed by other work: the wall time (and the price) grew, its CPU did not.
    busy = Stage(
        key="a", label="naive", requests=10, worker_seconds={"t": 240.0}, cores_per_worker={"t": 2}, engine_cpu_s=196.0
    )
    share = cpu_share(busy)
    assert share is not None and share < NAIVE_MIN_CPU_SHARE
    # Mesh stages record none.
    mesh = Stage(key="b", label="b", requests=1, worker_seconds={"p": 1.0}, cores_per_worker={"p": 1})
    assert cpu_share(mesh) is None


def _probed(key: str, *probes: float) -> Stage:
    return Stage(
        key=key, label=key, requests=1, worker_seconds={"p": 1.0}, cores_per_worker={"p": 1}, speed_probe_s=list(probes)
    )


def test_speed_drift_is_the_probe_during_naive_over_the_probe_before_the_mesh_stages() -> None:
    # (a) ran on a machine 1.3x slower than the mesh's stages: medians, so
    # one odd probe on either side does not decide it.
    stages = [_probed("a", 0.13, 0.13, 0.5, 0.13), _probed("b", 0.1), _probed("c", 0.1), _probed("d", 0.02)]
    assert speed_drift(stages) == pytest.approx(1.3)
    # No probes on one side (a run recorded before the probe): no claim.
    assert speed_drift([_probed("a"), _probed("b", 0.1)]) is None
    assert speed_drift([_probed("a", 0.1), _probed("b")]) is None


def test_the_verdict_names_a_speed_drift_and_the_ratio_at_the_mesh_speed() -> None:
    slower = [_probed("a", 0.13), _probed("b", 0.1), _probed("e", 0.1)]
    note = speed_note(slower, 18.2)
    assert "1.30x" in note and "(e) would be 14.0x" in note and "Rerun" in note
    held = [_probed("a", 0.105), _probed("b", 0.1)]
    note = speed_note(held, 18.2)
    assert "held" in note and "would be" not in note
    assert speed_note([_probed("a"), _probed("b", 0.1)], 18.2) == ""
