from typing import Any

import pytest
from pydantic import ValidationError

from headrace.runtime.config import Settings


def settings(**routing: Any) -> Settings:
    return Settings(
        pools={"small": {"engine": {"kind": "synthetic"}}, "big": {"engine": {"kind": "synthetic"}}},
        models={
            "fast": {"default_version": "1", "versions": {"1": {"pool": "small"}}},
            "strong": {
                "default_version": "1",
                "versions": {"1": {"pool": "big"}, "2": {"pool": "big"}, "0": {"pool": "big", "removed": True}},
            },
        },
        aliases={"chat": "strong", "smart": "strong"},
        default_model="strong",
        routing=routing,
    )


def test_a_full_routing_section_validates() -> None:
    s = settings(
        routes={
            "chat": {
                "policies": [{"kind": "ab", "arms": [{"name": "a", "target": "smart", "weight": 1}]}],
            },
            "smart": {"policies": [{"kind": "fast_accurate", "fast": "fast", "accurate": "strong@2", "cascade": {}}]},
        },
        canaries={"strong": {"version": "2", "steps": [10, 50]}},
        fallbacks={"strong": ["fast"]},
    )
    assert s.routing.canaries["strong"].steps == [10.0, 50.0]


@pytest.mark.parametrize(
    ("routing", "message"),
    [
        (
            {
                "routes": {
                    "nope": {"policies": [{"kind": "ab", "arms": [{"name": "a", "target": "fast", "weight": 1}]}]}
                }
            },
            "routing.routes.nope: not an alias",
        ),
        (
            {"routes": {"chat": {"policies": [{"kind": "fast_accurate", "fast": "ghost", "accurate": "strong"}]}}},
            "routing.routes.chat.policies[0].fast: unknown target 'ghost'",
        ),
        (
            {"routes": {"chat": {"policies": [{"kind": "fast_accurate", "fast": "fast", "accurate": "strong@0"}]}}},
            "has no served version '0'",
        ),
        (
            {
                "routes": {
                    "chat": {"policies": [{"kind": "ab", "arms": [{"name": "a", "target": "smart", "weight": 1}]}]},
                    "smart": {"policies": [{"kind": "ab", "arms": [{"name": "a", "target": "chat", "weight": 1}]}]},
                }
            },
            "aliases route in a loop: chat -> smart -> chat",
        ),
        ({"canaries": {"strong": {"version": "9"}}}, "routing.canaries.strong: model has no served version '9'"),
        ({"canaries": {"strong": {"version": "2", "steps": [50, 10]}}}, "canary steps must increase"),
        ({"canaries": {"strong": {"version": "2", "steps": [100]}}}, "between 0 and 100"),
        ({"fallbacks": {"strong": ["ghost"]}}, "routing.fallbacks.strong: 'ghost' is not a model"),
        ({"routes": {"chat": {"policies": [{"kind": "round_robin"}]}}}, "does not match any of the expected tags"),
    ],
)
def test_bad_routing_is_rejected_naming_the_field(routing: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        settings(**routing)
    assert message in str(info.value)
