import json
from pathlib import Path

import numpy as np
import pytest

from headrace.runtime.config import SemanticCacheSettings
from services.cache.calibration import RECORD, goals_met_for
from services.cache.embedder import Vectors
from services.cache.evaluation import (
    ABSENT,
    CATEGORIES,
    CONTRASTIVE,
    GRID,
    PAIRS,
    LabelledPair,
    Scored,
    choose_reworded,
    choose_threshold,
    cross_validate,
    load_labelled,
    split,
)
from services.cache.verifier import AcceptAll, LexicalVerifier


def test_the_evaluation_set_is_large_labelled_and_split_for_good() -> None:
    pairs = load_labelled()
    assert len(pairs) >= 300
    assert {p.category for p in pairs} == set(CATEGORIES)
    for category in CATEGORIES:
        assert sum(p.category == category for p in pairs) >= 30, category
    calibration, held_out = split(pairs)
    assert len(calibration) + len(held_out) == len(pairs)
    assert 0.35 < len(calibration) / len(pairs) < 0.65
    # Pairs sharing a stored question share a part, whatever its case or spacing.
    for pair in pairs:
        twin = LabelledPair(pair.category, "  " + pair.stored.upper(), "x")
        assert twin.in_calibration == pair.in_calibration


def test_a_malformed_line_is_refused_with_its_place(tmp_path: Path) -> None:
    bad = tmp_path / "pairs.txt"
    bad.write_text("# comment\nparaphrase | a | b\nsarcasm | a | b\n")
    with pytest.raises(ValueError, match="pairs.txt:3"):
        load_labelled(bad)


class TableEncoder:
    """Vectors from a table: each text's direction is given by the test."""

    model_id = "table"
    dimension = 3

    def __init__(self, table: dict[str, list[float]]) -> None:
        self._table = table

    def fits(self, text: str) -> bool:
        return True

    def encode(self, texts: list[str]) -> Vectors:
        rows = np.array([self._table[t] for t in texts], dtype=np.float32)
        normed: Vectors = rows / np.linalg.norm(rows, axis=1, keepdims=True)
        return normed


def stored_pair(category: str, stored: str, query: str) -> LabelledPair:
    """A pair whose stored question is not in the open set."""
    pair = LabelledPair(category, stored, query)
    assert not pair.stored_absent
    return pair


def test_every_hit_counts_and_the_verifier_decides_among_candidates() -> None:
    pairs = [
        stored_pair("paraphrase", "How do I reset my account password?", "How can I reset my account password?"),
        stored_pair("negation", "Is it legal to record a phone call?", "Is it illegal to record a phone call?"),
        stored_pair("antonym", "What is the best case of quicksort?", "What is the worst case of quicksort?"),
    ]
    encoder = TableEncoder(
        {
            "How do I reset my account password?": [1, 0, 0],
            "How can I reset my account password?": [1, 0.1, 0],
            "Is it legal to record a phone call?": [0, 1, 0],
            "Is it illegal to record a phone call?": [0, 1, 0.05],
            "What is the best case of quicksort?": [0, 0, 1],
            "What is the worst case of quicksort?": [0.05, 0, 1],
        }
    )
    without = Scored(pairs, encoder, AcceptAll()).report(0.9)
    assert without.hits == 3 and without.right == 1
    assert without.precision == pytest.approx(1 / 3)
    assert without.tallies["negation"].wrong_rate == 1.0 and without.worst_contrastive() == 1.0
    verified = Scored(pairs, encoder, LexicalVerifier()).report(0.9)
    assert (verified.hits, verified.right, verified.precision) == (1, 1, 1.0)
    assert verified.paraphrase_hit_rate == 1.0 and verified.worst_contrastive() == 0.0
    # Above every similarity: nothing hits, nothing is wrong.
    assert Scored(pairs, encoder, AcceptAll()).report(0.9999).hits == 0


def test_a_paraphrase_whose_question_was_never_stored_can_only_hit_wrongly() -> None:
    absent = next(
        LabelledPair("paraphrase", f"Question number {i}?", f"Paraphrase {i}?")
        for i in range(100)
        if LabelledPair("paraphrase", f"Question number {i}?", "").stored_absent
    )
    present = stored_pair("paraphrase", "How do I boil an egg?", "How should I boil an egg?")
    encoder = TableEncoder(
        {
            absent.stored: [0, 1, 0],
            absent.query: [1, 0.05, 0],
            present.stored: [1, 0, 0],
            present.query: [1, 0.01, 0],
        }
    )
    report = Scored([absent, present], encoder, AcceptAll()).report(0.9)
    assert report.tallies[ABSENT].queries == 1 and report.tallies[ABSENT].wrong == 1
    assert report.precision == 0.5


def test_the_lowest_threshold_within_the_goals_is_chosen() -> None:
    pairs = [
        stored_pair("paraphrase", "How do I reset my account password?", "How can I reset my account password?"),
        stored_pair("slot", "How do I store fresh basil?", "How do I store fresh parsley?"),
    ]
    encoder = TableEncoder(
        {
            "How do I reset my account password?": [1, 0, 0],
            "How can I reset my account password?": [1, 0.3, 0],  # ~0.958
            "How do I store fresh basil?": [0, 1, 0],
            "How do I store fresh parsley?": [0, 1, 0.2],  # ~0.981
        }
    )
    # Without a verifier only a threshold above the near miss keeps it out,
    # and then the paraphrase is lost too: no threshold keeps both goals.
    with pytest.raises(ValueError, match="no threshold"):
        choose_threshold(Scored(pairs, encoder, AcceptAll()), grid=[0.9, 0.95])
    chosen = choose_threshold(Scored(pairs, encoder, LexicalVerifier()), grid=[0.9, 0.95])
    assert chosen.threshold == 0.9 and chosen.paraphrase_hit_rate == 1.0


def test_the_configured_threshold_is_the_calibrated_one() -> None:
    record = json.loads(RECORD.read_text())
    settings = SemanticCacheSettings()
    assert settings.similarity_threshold == record["similarity_threshold"]
    assert settings.reworded_similarity_threshold == record["reworded_similarity"]
    assert settings.verifier == record["verifier"]
    assert record["data"]["sha256"] and record["data"]["pairs"] == len(load_labelled(PAIRS))
    calibration = record["calibration"]
    assert calibration["precision"] >= record["goals"]["min_precision"]
    for category in CONTRASTIVE:
        tally = calibration["categories"][category]
        assert tally["wrong"] <= record["goals"]["max_contrastive_wrong_rate"] * tally["queries"]
    # The decision "auto" reads is the held-out part's.
    assert record["goals_met"] == record["held_out"]["goals_met"]


def test_a_record_vouches_only_for_its_own_model_verifier_and_thresholds() -> None:
    record = {
        "goals_met": True,
        "model": "m",
        "verifier": "lexical",
        "similarity_threshold": 0.8,
        "reworded_similarity": 0.9,
    }

    def met(record: dict[str, object], model_id: str = "m", verifier: str = "lexical", **values: float) -> bool:
        thresholds = {"threshold": 0.8, "reworded": 0.9, **values}
        return goals_met_for(record, model_id=model_id, verifier=verifier, **thresholds)

    assert met(record)
    assert met(record, threshold=0.9, reworded=0.95)
    assert not met(record, threshold=0.79)
    # A rewording served from a lower similarity than calibrated: not vouched for.
    assert not met(record, reworded=0.85)
    assert not met(record, model_id="other")
    assert not met(record, verifier="none")
    assert not met({**record, "goals_met": False})
    assert not met({})


def test_a_rewording_is_served_only_from_the_similarity_calibrated_for_it() -> None:
    pairs = [
        stored_pair("paraphrase", "How do I quit my job politely?", "What is a polite way to resign from my job?"),
        stored_pair("paraphrase", "How do I reset my account password?", "How can I reset my account password?"),
        # A neighbour's rewording: the verifier cannot name what differs.
        stored_pair("slot", "How do I learn to play the guitar?", "How long does it take to learn guitar?"),
    ]
    encoder = TableEncoder(
        {
            pairs[0].stored: [1, 0, 0],
            pairs[0].query: [1, 0.2, 0],  # 0.98
            pairs[1].stored: [0, 1, 0],
            pairs[1].query: [0, 1, 0.1],
            pairs[2].stored: [0, 0, 1],
            pairs[2].query: [0, 0.75, 0.66],  # 0.66 to the guitar question, 0.75 to the password one
        }
    )
    scored = Scored(pairs, encoder, LexicalVerifier())
    # The wrong rewording at 0.66 (below any threshold) sets where rewordings start: 0.66 + margin.
    reworded = choose_reworded(scored, margin=0.1)
    assert reworded == pytest.approx(0.8)
    assert choose_reworded(scored, margin=0.2) == pytest.approx(0.865)
    report = scored.report(0.8, reworded=reworded)
    assert report.right == 2 and report.hits == 2
    # From a rewording threshold above the paraphrase's 0.98, it is lost; the plain one stays.
    assert scored.report(0.8, reworded=0.99).right == 1


def test_cross_validation_scores_every_question_once_at_thresholds_chosen_without_it() -> None:
    candidates = [LabelledPair("paraphrase", f"How do I cook dish number {i} at home?", "") for i in range(40)]
    stored = [p.stored for p in candidates if not p.stored_absent][:12]
    pairs = [stored_pair("paraphrase", s, s.replace("How do I", "How can I")) for s in stored]
    n = len(pairs)
    table: dict[str, list[float]] = {}
    for i, pair in enumerate(pairs):
        # Each question its own direction; its paraphrase a little off it.
        table[pair.stored] = [1.0 if j == i else 0.0 for j in range(n)]
        table[pair.query] = [1.0 if j == i else 0.05 if j == (i + 1) % n else 0.0 for j in range(n)]
    crossed = cross_validate(pairs, TableEncoder(table), LexicalVerifier(), k=4)
    assert len(crossed.chosen) == 4
    assert all(threshold == GRID[0] for threshold, _ in crossed.chosen)
    # Every question scored once, in the fold left out.
    assert crossed.report.tallies["paraphrase"].queries == n
    assert crossed.report.paraphrase_hit_rate == 1.0 and crossed.report.precision == 1.0
