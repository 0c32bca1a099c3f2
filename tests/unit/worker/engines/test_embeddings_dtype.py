"""Which dtype the embeddings engine runs its model in (`dtype: auto`)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from headrace.runtime.engine_settings import EmbeddingsEngineSettings
from services.worker.engines.embeddings import resolved_dtype, torch_sees_native_bf16


def _never_asked() -> bool:
    raise AssertionError("the CPU is asked only for auto on a CPU")


@pytest.mark.parametrize(("native", "expected"), [(True, "bfloat16"), (False, "float32")])
def test_auto_picks_bfloat16_only_where_the_cpu_does_it_natively(native: bool, expected: str) -> None:
    assert resolved_dtype("auto", "cpu", lambda: native) == expected


def test_only_a_cpu_is_judged_by_its_bf16_units() -> None:
    assert resolved_dtype("auto", "cuda", _never_asked) == "float32"


def test_an_explicit_dtype_is_kept_whatever_the_cpu() -> None:
    assert resolved_dtype("float32", "cpu", _never_asked) == "float32"
    assert resolved_dtype("bfloat16", "cpu", _never_asked) == "bfloat16"


def test_torch_answers_for_this_cpu_without_failing() -> None:
    # Whatever this machine is, the question is answered (a bool), never raised.
    assert isinstance(torch_sees_native_bf16(), bool)


def test_an_unknown_dtype_is_refused_at_load() -> None:
    assert EmbeddingsEngineSettings().dtype == "auto"
    with pytest.raises(ValidationError, match="dtype"):
        EmbeddingsEngineSettings(dtype="float16")  # type: ignore[arg-type]
