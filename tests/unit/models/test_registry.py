import pytest

from headrace.models.registry import ModelRegistry
from headrace.runtime.config import Settings
from headrace.runtime.errors import InvalidArgument, NotFound


def registry() -> ModelRegistry:
    return ModelRegistry(
        Settings(
            pools={
                "gen": {"engine": {"kind": "synthetic"}, "price_per_hour": 0.5},
                "emb": {"engine": {"kind": "synthetic"}},
            },
            models={
                "smol": {
                    "default_version": "2",
                    "versions": {
                        "1": {"pool": "gen", "deprecated": True, "replaced_by": "smol@2"},
                        "2": {"pool": "gen"},
                        "0": {"pool": "gen", "removed": True, "replaced_by": "smol@2"},
                    },
                },
                "mini": {"task": "embed", "default_version": "1", "versions": {"1": {"pool": "emb"}}},
            },
            aliases={"chat": "smol@1", "fast": "smol"},
            default_model="smol",
            default_embedding_model="mini",
        )
    )


def test_names_aliases_and_pins_resolve_to_one_version() -> None:
    reg = registry()
    assert reg.resolve("smol", task="generate").model_version == "smol@2"
    assert reg.resolve("smol", task="generate").reason == "default"
    assert reg.resolve("smol@1", task="generate").reason == "pinned"
    fast = reg.resolve("fast", task="generate")
    assert (fast.model_version, fast.reason) == ("smol@2", "alias:fast")
    assert reg.resolve("", task="generate").model_version == "smol@2"
    assert reg.resolve("", task="embed").model_version == "mini@1"
    assert reg.resolve("smol", task="generate").price_per_hour == 0.5


def test_deprecated_versions_still_serve_with_a_warning() -> None:
    chat = registry().resolve("chat", task="generate")
    assert chat.model_version == "smol@1"
    assert chat.deprecation == "smol@1 is deprecated; move to smol@2"


def test_unknown_removed_and_wrong_task_are_clear_errors() -> None:
    reg = registry()
    with pytest.raises(NotFound, match="unknown model 'ghost'; available: chat, fast, mini, smol"):
        reg.resolve("ghost", task="generate")
    with pytest.raises(NotFound, match="has no version '9'; versions: 0, 1, 2"):
        reg.resolve("smol@9", task="generate")
    with pytest.raises(NotFound, match="smol@0 was removed; use smol@2"):
        reg.resolve("smol@0", task="generate")
    with pytest.raises(InvalidArgument, match="is an embedding model and cannot generate"):
        reg.resolve("mini", task="generate")


def test_listing_shows_names_versions_and_aliases() -> None:
    ids = {entry.id for entry in registry().entries(include_deprecated=True)}
    assert ids == {"smol", "smol@1", "smol@2", "mini", "mini@1", "chat", "fast"}
    current = {entry.id for entry in registry().entries(include_deprecated=False)}
    assert "smol@1" not in current and "smol@0" not in current
