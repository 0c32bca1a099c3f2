"""bench-quant's arithmetic and shipped data (the run itself needs vLLM)."""

from __future__ import annotations

import pytest

from bench.quant import agreement, cost_per_million_tokens, load_paragraphs, load_prompts


def test_agreement_counts_exact_answers_first_choices_and_shared_prefixes() -> None:
    reference = [[1, 2, 3, 4], [5, 6], [7, 8, 9, 10]]
    other = [[1, 2, 3, 4], [5, 9], [0, 8, 9, 10]]
    # The other model's rank of each reference token (teacher-forced).
    ranks = [[1, 1, 1, 1], [1, 2], [3, 1, 1, 1]]
    result = agreement(reference, other, ranks)
    assert result.answers == 3
    assert result.exact_match == pytest.approx(1 / 3, abs=1e-4)
    # 8 of the 10 reference tokens ranked first.
    assert result.token_agreement == pytest.approx(0.8)
    # Shared prefixes 4 + 1 + 0 of 10 tokens: one early difference loses the rest.
    assert result.prefix_agreement == pytest.approx(0.5)


def test_agreement_of_identical_answers_is_total() -> None:
    answers = [[1, 2], [3]]
    result = agreement(answers, answers, [[1, 1], [1]])
    assert (result.exact_match, result.token_agreement, result.prefix_agreement) == (1.0, 1.0, 1.0)


def test_cost_per_million_tokens() -> None:
    # 0.09 USD an hour at 250 tokens/s: 900,000 tokens an hour.
    assert cost_per_million_tokens(0.09, 250.0) == pytest.approx(0.1)


def test_the_shipped_prompt_set_and_held_text() -> None:
    prompts = load_prompts()
    assert len(prompts) == 40 and len(set(prompts)) == 40
    assert not any(p.startswith("#") for p in prompts)
    paragraphs = load_paragraphs()
    assert len(paragraphs) >= 5 and sum(len(p.split()) for p in paragraphs) > 500
