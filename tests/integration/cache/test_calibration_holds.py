"""The shipped threshold and verifier, re-checked with the real
all-MiniLM-L6-v2 on the calibration part of bench/data/
semantic-cache-pairs.txt: a change to the verifier, the threshold, the
model or the data that breaks the goals there fails here."""

from __future__ import annotations

import json

import pytest

from headrace.runtime.config import SemanticCacheSettings
from services.cache.calibration import RECORD
from services.cache.embedder import MiniLmEncoder
from services.cache.evaluation import (
    CONTRASTIVE,
    GOALS,
    Scored,
    choose_reworded,
    choose_threshold,
    load_labelled,
    split,
)
from services.cache.verifier import AcceptAll, LexicalVerifier

pytestmark = pytest.mark.slow


def test_the_shipped_threshold_and_verifier_meet_the_goals_on_the_calibration_part(minilm: MiniLmEncoder) -> None:
    settings = SemanticCacheSettings()
    record = json.loads(RECORD.read_text())
    assert record["model"] == minilm.model_id
    calibration, _ = split(load_labelled())
    scored = Scored(calibration, minilm, LexicalVerifier(reworded_similarity=settings.reworded_similarity_threshold))
    report = scored.report(settings.similarity_threshold)
    assert report.precision >= GOALS.min_precision, report.wrong_examples
    for category in CONTRASTIVE:
        assert report.tallies[category].wrong_rate <= GOALS.max_contrastive_wrong_rate, category
    assert report.paraphrase_hit_rate >= GOALS.min_paraphrase_hit_rate
    # The calibration rule, re-run, lands where the record says.
    assert choose_reworded(scored) == record["reworded_similarity"] == settings.reworded_similarity_threshold
    assert choose_threshold(scored, reworded=record["reworded_similarity"]).threshold == record["similarity_threshold"]
    assert report.summary()["categories"] == record["calibration"]["categories"]
    # And the verifier is what makes it: the threshold alone lets near misses through.
    assert not scored.report(settings.similarity_threshold, verify=False).meets(GOALS)
    assert AcceptAll().name != settings.verifier
