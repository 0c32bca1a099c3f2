"""Whether semantic hits are served in a partition: the safe default.

`cache.semantic.serve` is "auto" unless set: semantic hits are served only
where the calibration record vouches for the embedding model, verifier and
threshold in use (its held-out goals met). A tenant's setting
(`cache.semantic.tenants`) overrides a model's (`cache.semantic.models`,
by model name), which overrides `serve`. Exact hits are never affected.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from headrace.runtime.config import SemanticCacheSettings
from services.cache.calibration import RECORD, goals_met_for
from services.cache.partition import Partition

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SemanticServing:
    settings: SemanticCacheSettings
    # What "auto" means here: the calibration record vouches for this setup.
    calibrated: bool

    @classmethod
    def from_record(
        cls, settings: SemanticCacheSettings, *, model_id: str, verifier: str, record_path: Path = RECORD
    ) -> SemanticServing:
        try:
            record = json.loads(record_path.read_text())
        except (OSError, ValueError) as exc:
            log.warning("no calibration record (%s): semantic hits are off where serve is auto", exc)
            record = {}
        calibrated = goals_met_for(
            record,
            model_id=model_id,
            verifier=verifier,
            threshold=settings.similarity_threshold,
            reworded=settings.reworded_similarity_threshold,
        )
        if not calibrated:
            log.warning(
                "the calibration record does not vouch for model %s, verifier %s, threshold %s "
                "(goals met: %s): semantic hits are off where cache.semantic.serve is auto",
                model_id,
                verifier,
                settings.similarity_threshold,
                record.get("goals_met"),
            )
        return cls(settings, calibrated)

    def serves(self, partition: Partition) -> bool:
        mode = self.settings.tenants.get(partition.tenant)
        if mode is None:
            mode = self.settings.models.get(partition.model_version.split("@", 1)[0])
        if mode is None:
            mode = self.settings.serve
        return mode == "on" or (mode == "auto" and self.calibrated)
