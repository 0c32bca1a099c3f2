import pytest

from headrace.runtime.routing_settings import CascadeSettings
from services.router.routing.cascade import TextualAnswerCheck


def test_a_complete_confident_answer_passes() -> None:
    check = TextualAnswerCheck(CascadeSettings())
    assert check.failure("Paris is the capital of France.", truncated=False) is None


@pytest.mark.parametrize(
    ("text", "truncated", "why"),
    [
        ("Paris is", True, "truncated by max_tokens"),
        ("   ", False, "shorter than 1 characters"),
        ("I'm not sure, maybe Lyon.", False, "uncertain"),
        ("Honestly I DON'T KNOW.", False, "uncertain"),
    ],
)
def test_answers_that_fail_say_why(text: str, truncated: bool, why: str) -> None:
    failure = TextualAnswerCheck(CascadeSettings()).failure(text, truncated=truncated)
    assert failure is not None and why in failure


def test_truncation_may_be_allowed() -> None:
    check = TextualAnswerCheck(CascadeSettings(escalate_on_truncation=False, min_answer_chars=5))
    assert check.failure("Paris is lovely", truncated=True) is None
    assert check.failure("Pa", truncated=True) == "shorter than 5 characters"
