from collections.abc import Sequence

import pytest

from headrace.runtime.routing_settings import EmbeddingScorerSettings, ScorerSettings
from services.router.routing.decision import RoutingRequest
from services.router.routing.policies.difficulty import CentroidClassifier, DifficultyScorer


def request(text: str, max_tokens: int = 0) -> RoutingRequest:
    return RoutingRequest(request_id="r", tenant="t", model="chat", text=text, max_tokens=max_tokens)


async def test_short_plain_questions_score_low_and_marked_tasks_high() -> None:
    scorer = DifficultyScorer(ScorerSettings())
    easy = await scorer.score(request("What is the capital of France?"))
    hard = await scorer.score(request("Explain why the sky is blue, step by step."))
    assert easy < 0.1
    assert hard >= 0.6


async def test_length_and_completion_budget_raise_the_score() -> None:
    scorer = DifficultyScorer(ScorerSettings(long_prompt_tokens=100, length_weight=1.0, marker_weight=0.0))
    assert await scorer.score(request("x" * 200)) == pytest.approx(0.5)
    assert await scorer.score(request("x" * 4000)) == pytest.approx(1.0)
    assert await scorer.score(request("hi", max_tokens=2048)) == pytest.approx(1.0)


async def test_custom_markers_are_matched_case_insensitively() -> None:
    scorer = DifficultyScorer(ScorerSettings(markers=["Haiku"], length_weight=0.0, marker_weight=1.0))
    assert await scorer.score(request("write a HAIKU about rivers")) == 1.0
    assert await scorer.score(request("write a limerick")) == 0.0


class KeywordEncoder:
    """A stand-in for MiniLM: the 'embedding' says whether words occur."""

    words = ("integral", "theorem", "hello", "weather")

    def __init__(self) -> None:
        self.calls = 0

    def encode(self, texts: Sequence[str]) -> list[list[float]]:
        self.calls += 1
        return [[1.0 if w in t.lower() else 0.01 for w in self.words] for t in texts]


async def test_the_embedding_classifier_leans_towards_the_nearer_examples() -> None:
    encoder = KeywordEncoder()
    settings = EmbeddingScorerSettings(
        easy_examples=["hello there", "what is the weather"], hard_examples=["solve this integral", "prove the theorem"]
    )
    classifier = CentroidClassifier(encoder, settings)
    assert await classifier.score("compute the integral of x") > 0.9
    assert await classifier.score("hello, nice weather") < 0.1
    scorer = DifficultyScorer(
        ScorerSettings(length_weight=0.0, marker_weight=0.0, embedding_weight=1.0, embedding=settings), classifier
    )
    signals = await scorer.signals(request("a theorem about an integral"))
    assert signals["score"] == signals["embedding"] > 0.9
    # Centroids are computed once: 2 calls for them, then one per text.
    assert encoder.calls == 2 + 3


def test_an_embedding_weight_needs_examples() -> None:
    with pytest.raises(ValueError, match="needs an embedding block"):
        ScorerSettings(embedding_weight=0.5)
