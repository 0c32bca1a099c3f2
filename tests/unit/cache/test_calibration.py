import json

import numpy as np
import pytest

from headrace.runtime.config import SemanticCacheSettings
from services.cache.calibration import (
    RECORD,
    NearestOrigins,
    Pair,
    choose_threshold,
    evaluate,
    in_calibration_split,
    split_pairs,
)


def test_the_split_is_fixed_and_keeps_duplicate_origins_together() -> None:
    pairs = [Pair(f"Sentence number {i}.", f"Paraphrase {i}.") for i in range(200)]
    calibration, held_out = split_pairs(pairs)
    assert len(calibration) + len(held_out) == 200
    assert 60 < len(calibration) < 140  # a hash split, roughly half
    assert split_pairs(pairs) == (calibration, held_out)
    # Case and spacing do not move a pair to the other split.
    for pair in pairs:
        twin = Pair("  " + pair.origin.upper().replace(" ", "  "), "another paraphrase")
        assert in_calibration_split(twin) == in_calibration_split(pair)


def nearest(similarity: list[float], correct: list[bool]) -> NearestOrigins:
    return NearestOrigins(np.array(similarity, dtype=np.float32), np.array(correct))


def test_evaluation_counts_hits_and_wrong_hits() -> None:
    result = evaluate(nearest([0.99, 0.95, 0.90, 0.80], [True, False, True, True]), 0.9)
    assert (result.queries, result.hits, result.wrong_hits) == (4, 3, 1)
    assert result.hit_rate == pytest.approx(0.75) and result.wrong_hit_rate == pytest.approx(1 / 3)


def test_the_lowest_threshold_that_meets_the_target_is_chosen() -> None:
    # Wrong hits at 0.93 and 0.86: under 0.86 two in ten hits are wrong.
    sims = [0.99, 0.98, 0.97, 0.96, 0.95, 0.94, 0.93, 0.92, 0.91, 0.90, 0.86, 0.85]
    ok = [True, True, True, True, True, True, False, True, True, True, False, True]
    assert choose_threshold(nearest(sims, ok), target=0.0, grid=[0.85, 0.9, 0.935, 0.95]).threshold == 0.935
    assert choose_threshold(nearest(sims, ok), target=0.1, grid=[0.85, 0.9, 0.935, 0.95]).threshold == 0.9
    with pytest.raises(ValueError, match="no threshold"):
        choose_threshold(nearest([0.99], [False]), target=0.0, grid=[0.5, 0.9])


def test_the_configured_threshold_is_the_calibrated_one() -> None:
    record = json.loads(RECORD.read_text())
    assert SemanticCacheSettings().similarity_threshold == record["similarity_threshold"]
    assert record["calibration"]["wrong_hit_rate"] <= record["target_wrong_hit_rate"]
    assert record["data"]["calibration_pairs"] + record["data"]["held_out_pairs"] == record["data"]["pairs"]
