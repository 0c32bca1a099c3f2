import json
from pathlib import Path

import pytest

from headrace.runtime.config import SemanticCacheSettings
from services.cache.partition import Partition
from services.cache.semantic_serving import SemanticServing


def record(path: Path, goals_met: bool) -> Path:
    path.write_text(
        json.dumps(
            {
                "goals_met": goals_met,
                "model": "m",
                "verifier": "lexical",
                "similarity_threshold": 0.8,
                "reworded_similarity": 0.85,
            }
        )
    )
    return path


def serving(path: Path, **settings: object) -> SemanticServing:
    return SemanticServing.from_record(
        SemanticCacheSettings.model_validate(settings), model_id="m", verifier="lexical", record_path=path
    )


ACME = Partition("acme", "smollm2@1")
GLOBEX = Partition("globex", "smollm2@1")
OTHER_MODEL = Partition("globex", "qwen@3")


def test_auto_serves_only_what_the_calibration_vouches_for(tmp_path: Path) -> None:
    assert serving(record(tmp_path / "met.json", True)).serves(ACME)
    assert not serving(record(tmp_path / "unmet.json", False)).serves(ACME)
    assert not serving(tmp_path / "missing.json").serves(ACME)
    # Rewordings served from below the calibrated similarity: not vouched for.
    assert not serving(record(tmp_path / "met.json", True), reworded_similarity_threshold=0.8).serves(ACME)
    # A threshold below the calibrated one is not vouched for.
    assert not serving(record(tmp_path / "met.json", True), similarity_threshold=0.7).serves(ACME)


def test_tenants_then_models_then_the_default_decide(tmp_path: Path) -> None:
    unmet = record(tmp_path / "unmet.json", False)
    chosen = serving(unmet, tenants={"acme": "on"}, models={"qwen": "on"})
    assert chosen.serves(ACME) and chosen.serves(OTHER_MODEL) and not chosen.serves(GLOBEX)
    met = record(tmp_path / "met.json", True)
    chosen = serving(met, tenants={"acme": "off"}, models={"smollm2": "off", "qwen": "auto"})
    assert not chosen.serves(ACME) and not chosen.serves(GLOBEX) and chosen.serves(OTHER_MODEL)
    assert not serving(met, serve="off").serves(ACME)
    assert serving(unmet, serve="on").serves(ACME)


def test_a_bad_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="serve"):
        SemanticCacheSettings.model_validate({"serve": "sometimes"})
