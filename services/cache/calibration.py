"""Calibrate the semantic cache's similarity threshold on labelled pairs,
for a target wrong-hit rate, instead of guessing it.

    python -m services.cache.calibration [--data PATH] [--target 0.01]

Data: paraphrase-pairs.json in the project's shared data folder, pairs
{"origin", "similar"}. The split is fixed and never tuned: a pair belongs to
the calibration split when SHA-256 of its normalized origin, read as a
number from its first 8 hex digits, is even; the others are held out (only
bench/cache.py measures them). Pairs with the same origin share a split.

What is measured is the cache's own rule: the calibration split's origins
are stored, each paraphrase is looked up, the nearest origin answers when
its cosine similarity reaches the threshold. A hit is correct when that
origin is the paraphrase's own (same normalized text), wrong otherwise.
The threshold is the smallest value on a 0.005 grid whose wrong-hit rate
(wrong hits / hits) is at most the target. The result, with its provenance,
goes to services/cache/calibration.json; SemanticCacheSettings carries the
value (a unit test keeps the two equal).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from services.cache.embedder import MiniLmEncoder, TextEncoder, Vectors

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "paraphrase-pairs.json"
RECORD = Path(__file__).with_name("calibration.json")
TARGET_WRONG_HIT_RATE = 0.01
GRID = tuple(round(0.5 + 0.005 * i, 3) for i in range(101))  # 0.500 .. 1.000


@dataclass(frozen=True)
class Pair:
    origin: str
    similar: str


def normalize(text: str) -> str:
    return " ".join(text.lower().split())


def load_pairs(path: Path) -> list[Pair]:
    return [Pair(str(item["origin"]), str(item["similar"])) for item in json.loads(path.read_text())]


def in_calibration_split(pair: Pair) -> bool:
    return int(hashlib.sha256(normalize(pair.origin).encode()).hexdigest()[:8], 16) % 2 == 0


def split_pairs(pairs: Sequence[Pair]) -> tuple[list[Pair], list[Pair]]:
    """(calibration, held out)."""
    calibration = [p for p in pairs if in_calibration_split(p)]
    held_out = [p for p in pairs if not in_calibration_split(p)]
    return calibration, held_out


@dataclass(frozen=True)
class Evaluation:
    threshold: float
    queries: int
    hits: int
    wrong_hits: int

    @property
    def hit_rate(self) -> float:
        return self.hits / self.queries if self.queries else 0.0

    @property
    def wrong_hit_rate(self) -> float:
        """Share of hits that answered with another pair's entry."""
        return self.wrong_hits / self.hits if self.hits else 0.0


@dataclass(frozen=True)
class NearestOrigins:
    """For each paraphrase: the similarity of the nearest stored origin and
    whether that origin is its own."""

    similarity: Vectors
    correct: np.ndarray


def nearest_origins(pairs: Sequence[Pair], encoder: TextEncoder) -> NearestOrigins:
    origins = list(dict.fromkeys(normalize(p.origin) for p in pairs))
    first_text = {normalize(p.origin): p.origin for p in reversed(pairs)}
    stored = encoder.encode([first_text[o] for o in origins])
    queries = encoder.encode([p.similar for p in pairs])
    scores = queries @ stored.T
    best = scores.argmax(axis=1)
    own = np.array([origins.index(normalize(p.origin)) for p in pairs])
    return NearestOrigins(similarity=scores.max(axis=1).astype(np.float32), correct=best == own)


def evaluate(nearest: NearestOrigins, threshold: float) -> Evaluation:
    hit = nearest.similarity >= threshold
    return Evaluation(
        threshold=threshold,
        queries=len(hit),
        hits=int(hit.sum()),
        wrong_hits=int((hit & ~nearest.correct).sum()),
    )


def choose_threshold(nearest: NearestOrigins, target: float, grid: Sequence[float] = GRID) -> Evaluation:
    """The lowest threshold (most hits) whose wrong-hit rate is <= target."""
    for threshold in sorted(grid):
        evaluation = evaluate(nearest, threshold)
        if evaluation.hits and evaluation.wrong_hit_rate <= target:
            return evaluation
    raise ValueError(f"no threshold on the grid reaches a wrong-hit rate of {target:.2%}")


def calibrate(data: Path, encoder: TextEncoder, target: float) -> dict[str, object]:
    pairs = load_pairs(data)
    calibration, held_out = split_pairs(pairs)
    chosen = choose_threshold(nearest_origins(calibration, encoder), target)
    return {
        "similarity_threshold": chosen.threshold,
        "target_wrong_hit_rate": target,
        "calibration": {**asdict(chosen), "hit_rate": chosen.hit_rate, "wrong_hit_rate": chosen.wrong_hit_rate},
        "model": encoder.model_id,
        "data": {
            "file": data.name,
            "sha256": hashlib.sha256(data.read_bytes()).hexdigest(),
            "pairs": len(pairs),
            "calibration_pairs": len(calibration),
            "held_out_pairs": len(held_out),
        },
        "split": "calibration: int(sha256(normalized origin)[:8], 16) is even; held out: odd",
        "rule": "smallest threshold on a 0.005 grid with wrong hits / hits <= target; nearest stored origin",
        "when": time.strftime("%Y-%m-%d"),
        "command": "python -m services.cache.calibration",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--target", type=float, default=TARGET_WRONG_HIT_RATE)
    parser.add_argument("--out", type=Path, default=RECORD)
    args = parser.parse_args()
    record = calibrate(args.data, MiniLmEncoder(), args.target)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    print(f"written: {args.out}; set cache.semantic.similarity_threshold to {record['similarity_threshold']}")


if __name__ == "__main__":
    main()
