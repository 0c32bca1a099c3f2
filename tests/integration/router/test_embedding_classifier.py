"""The difficulty scorer's embedding classifier on the real offline
all-MiniLM-L6-v2: requests like the hard examples score high, requests
like the easy ones low, including ones no keyword marker catches."""

from __future__ import annotations

import pytest

from headrace.runtime.routing_settings import EmbeddingScorerSettings, ScorerSettings
from services.router.routing.decision import RoutingRequest
from services.router.routing.policies.difficulty import CentroidClassifier, DifficultyScorer
from services.router.routing.text_encoder import MiniLMEncoder

pytestmark = pytest.mark.slow

EXAMPLES = EmbeddingScorerSettings(
    easy_examples=[
        "What is the capital of Italy?",
        "Say hello.",
        "What color is the sky?",
        "How many days are in a week?",
        "Name a fruit.",
    ],
    hard_examples=[
        "Derive the closed form of the sum of the first n squares.",
        "Write a Python function that merges overlapping intervals and analyse its complexity.",
        "Prove that the square root of two is irrational.",
        "Design a database schema for a multi-tenant billing system and justify the trade-offs.",
        "What is the integral of x squared times sine of x?",
        "Write a thread-safe bounded queue in C++.",
    ],
)


def request(text: str) -> RoutingRequest:
    return RoutingRequest(request_id="r", tenant="t", model="chat", text=text)


async def test_minilm_separates_easy_from_hard_requests() -> None:
    classifier = CentroidClassifier(MiniLMEncoder(), EXAMPLES)
    easy = [await classifier.score(t) for t in ("What is the capital of Spain?", "Name an animal.")]
    hard = [
        await classifier.score(t)
        for t in (
            "Find the derivative of ln(x) times cos(x) and simplify.",
            "Implement a thread-safe LRU cache in Go.",
        )
    ]
    assert max(easy) < 0.5 < min(hard), (easy, hard)
    # Neither hard request carries a keyword marker: only the embedding sees it.
    scorer = DifficultyScorer(
        ScorerSettings(length_weight=0.1, marker_weight=0.3, embedding_weight=0.6, embedding=EXAMPLES), classifier
    )
    signals = await scorer.signals(request("Find the derivative of ln(x) times cos(x) and simplify."))
    assert signals["markers"] == 0.0 and signals["embedding"] > 0.5
