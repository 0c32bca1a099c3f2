"""The trace generator: deterministic for a seed, and the shape it promises
(arrivals, shares of repeats, paraphrases, long prompts, batch, ramps)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headrace.workload.generate import WorkloadShape, generate, load_pairs
from headrace.workload.trace import TraceError, TraceRecord, read_trace, write_trace


def within(observed: int, total: int, share: float) -> bool:
    """Observed count inside 5 binomial standard deviations of share x total."""
    sd = math.sqrt(max(total * share * (1 - share), 1.0))
    return abs(observed - total * share) <= 5 * sd + 1


def test_the_same_seed_gives_the_same_trace_and_another_seed_another() -> None:
    shape = WorkloadShape(seed=7, duration_s=30, rate_rps=5)
    first, again = list(generate(shape)), list(generate(shape))
    assert first == again and len(first) > 50
    other = list(generate(WorkloadShape(seed=8, duration_s=30, rate_rps=5)))
    assert [r.at_s for r in other] != [r.at_s for r in first]


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    repeats=st.floats(0, 0.5),
    paraphrases=st.floats(0, 0.4),
    long_share=st.floats(0, 1),
    batch=st.floats(0, 1),
    arrivals=st.sampled_from(["poisson", "bursty"]),
)
def test_shares_and_arrivals_follow_the_shape(
    seed: int, repeats: float, paraphrases: float, long_share: float, batch: float, arrivals: str
) -> None:
    shape = WorkloadShape(
        seed=seed,
        duration_s=200,
        rate_rps=5,
        arrivals=arrivals,  # type: ignore[arg-type]
        repeat_share=repeats,
        paraphrase_share=paraphrases,
        long_share=long_share,
        batch_share=batch,
    )
    records = list(generate(shape))
    n = len(records)
    times = [r.at_s for r in records]
    assert times == sorted(times) and all(0 <= t < shape.duration_s for t in times)
    if arrivals == "poisson":
        # 5/s for 200 s: 1,000 expected (bursty's count spreads far wider: below).
        assert abs(n - 1000) <= 5 * math.sqrt(1000)
    # The first request cannot repeat anything: shares are of the rest.
    assert within(sum(r.origin == "repeat" for r in records[1:]), n - 1, repeats)
    assert within(sum(r.origin == "paraphrase" for r in records[1:]), n - 1, paraphrases)
    assert within(sum(r.lane == "batch" for r in records), n, batch)
    fresh = [r for r in records if r.origin == "fresh"]
    assert within(sum(r.long for r in fresh), len(fresh), long_share)


def test_bursty_arrivals_keep_the_mean_rate_and_come_in_bursts() -> None:
    def per_second(arrivals: str, seed: int) -> list[int]:
        shape = WorkloadShape(seed=seed, duration_s=2000, rate_rps=2, arrivals=arrivals, burst_factor=4)  # type: ignore[arg-type]
        counts = [0] * 2000
        for record in generate(shape):
            counts[int(record.at_s)] += 1
        return counts

    def dispersion(counts: list[int]) -> float:
        mean = sum(counts) / len(counts)
        return sum((c - mean) ** 2 for c in counts) / len(counts) / mean

    bursty = [c for seed in range(3) for c in per_second("bursty", seed)]
    poisson = per_second("poisson", 0)
    # The same mean (2/s; 4,000 a run) within 15%, ...
    assert abs(sum(bursty) / 3 - 4000) < 600
    # ... but clumped: a Poisson process has a variance-to-mean ratio of 1.
    assert dispersion(poisson) < 1.3
    assert dispersion(bursty) > 2.0


def test_repeats_ask_an_earlier_question_word_for_word_and_paraphrases_in_other_words() -> None:
    records = list(generate(WorkloadShape(seed=3, duration_s=120, rate_rps=5, repeat_share=0.3, paraphrase_share=0.3)))
    first_of_group: dict[int, TraceRecord] = {}
    for record in records:
        if record.origin == "fresh":
            assert record.group not in first_of_group
            first_of_group[record.group] = record
            continue
        original = first_of_group[record.group]  # asked before
        assert record.messages[0] == original.messages[0]  # same system prompt
        if record.origin == "repeat":
            assert record.messages == original.messages
        else:
            assert record.messages[1].content != original.messages[1].content


def test_popular_questions_follow_a_zipf_law() -> None:
    records = list(generate(WorkloadShape(seed=5, duration_s=300, rate_rps=5, repeat_share=0.5, zipf_s=1.2)))
    counts: dict[int, int] = {}
    for record in records:
        if record.origin == "repeat":
            counts[record.group] = counts.get(record.group, 0) + 1
    ranked = sorted(counts.values(), reverse=True)
    # The most asked question takes far more than its even share.
    assert ranked[0] > 10 * (sum(ranked) / len(ranked))


def test_a_ramp_rises_to_its_peak_and_falls_back() -> None:
    shape = WorkloadShape(seed=1, duration_s=100, rate_rps=2, profile="ramp", peak_factor=10, ramp_s=20, hold_s=20)
    times = [r.at_s for r in generate(shape)]
    base = sum(1 for t in times if t >= 60) / 40.0  # after the ramp down
    peak = sum(1 for t in times if 20 <= t < 40) / 20.0  # the hold
    assert 5 * base < peak
    assert abs(peak - 20.0) < 6.0


def test_long_prompts_share_a_few_system_prompts_of_thousands_of_characters() -> None:
    records = [r for r in generate(WorkloadShape(seed=2, duration_s=60, rate_rps=5, long_share=1.0)) if r.long]
    systems = {r.messages[0].content for r in records}
    assert 1 < len(systems) <= 3
    assert all(len(s) > 2000 for s in systems)


def test_bad_shapes_are_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="repeat_share"):
        WorkloadShape(repeat_share=0.8, paraphrase_share=0.4)
    with pytest.raises(ValueError, match="rate_rps"):
        WorkloadShape(rate_rps=0)


def test_a_trace_round_trips_and_a_bad_line_is_named(tmp_path: Path) -> None:
    records = list(generate(WorkloadShape(seed=4, duration_s=10, rate_rps=3)))
    path = tmp_path / "trace.jsonl"
    assert write_trace(records, path) == len(records)
    assert read_trace(path) == records
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n")
    with pytest.raises(TraceError, match=r"trace.jsonl:2: at_s"):
        read_trace(path)
    path.write_text('{"id": "x", "at_s": 1}\n')
    with pytest.raises(TraceError, match=r"trace.jsonl:1: .*messages"):
        read_trace(path)


def test_the_shipped_pairs_are_there() -> None:
    pairs = load_pairs()
    assert len(pairs) == 999 and all(a and b and a != b for a, b in pairs)


def test_the_cli_writes_a_trace_and_names_a_bad_option(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from headrace.cli import main

    out = tmp_path / "t.jsonl"
    runner = CliRunner()
    done = runner.invoke(main, ["bench", "trace", str(out), "--duration", "5", "--rate", "4", "--tenant", "a=2"])
    assert done.exit_code == 0, done.output
    assert {r.tenant for r in read_trace(out)} == {"a"}
    bad = runner.invoke(main, ["bench", "trace", str(out), "--tenant", "a=lots"])
    assert bad.exit_code == 2 and "NAME=WEIGHT" in bad.output
    bad = runner.invoke(main, ["bench", "trace", str(out), "--repeats", "0.9", "--paraphrases", "0.9"])
    assert bad.exit_code == 2 and "repeat_share" in bad.output
