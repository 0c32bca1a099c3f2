"""A job's model version and pool, chosen once at submit."""

from __future__ import annotations

import pytest

from headrace.batch.model_choice import resolve_batch_model
from headrace.runtime.config import Settings
from headrace.runtime.errors import InvalidArgument, NotFound

SETTINGS = Settings(
    pools={"a": {"engine": {"kind": "synthetic"}}, "b": {"engine": {"kind": "synthetic"}}},
    models={
        "m": {
            "default_version": "2",
            "versions": {"1": {"pool": "a", "removed": True, "replaced_by": "m@2"}, "2": {"pool": "b"}},
        },
        "e": {"task": "embed", "default_version": "1", "versions": {"1": {"pool": "a"}}},
    },
    aliases={"fast": "m@2"},
    default_model="m",
    default_embedding_model="",
)


@pytest.mark.parametrize(("name", "version", "pool"), [("m", "m@2", "b"), ("fast", "m@2", "b"), ("", "m@2", "b")])
def test_names_resolve_to_a_version_and_its_pool(name: str, version: str, pool: str) -> None:
    chosen = resolve_batch_model(SETTINGS, name, task="generate")
    assert (chosen.model_version, chosen.pool) == (version, pool)


@pytest.mark.parametrize(
    ("name", "task", "error", "words"),
    [
        ("nope", "generate", NotFound, "unknown model 'nope'; available: e, fast, m"),
        ("m@1", "generate", NotFound, "removed; use m@2"),
        ("m@9", "generate", NotFound, "no version '9'"),
        ("e", "generate", InvalidArgument, "is an embedding model"),
        ("", "embed", InvalidArgument, "no default embed model"),
    ],
)
def test_what_cannot_run_is_refused_by_name(name: str, task: str, error: type[Exception], words: str) -> None:
    with pytest.raises(error, match="body.model") as caught:
        resolve_batch_model(SETTINGS, name, task=task)  # type: ignore[arg-type]
    assert words in str(caught.value)
