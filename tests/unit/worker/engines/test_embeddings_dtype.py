"""Which dtype the embeddings engine runs its model in (`dtype: auto`)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from headrace.runtime.engine_settings import EmbeddingsEngineSettings
from services.worker.engines.embeddings import cpu_flags, resolved_dtype

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
flags\t\t: fpu vme sse sse2 avx2 avx512f amx_bf16 amx_tile
bogomips\t: 4000.00

processor\t: 1
flags\t\t: fpu vme
"""


def test_the_flags_are_the_first_processors() -> None:
    assert cpu_flags(CPUINFO) == frozenset({"fpu", "vme", "sse", "sse2", "avx2", "avx512f", "amx_bf16", "amx_tile"})
    assert cpu_flags("") == frozenset()


@pytest.mark.parametrize(
    ("flags", "device", "expected"),
    [
        ({"avx512f", "amx_bf16"}, "cpu", "bfloat16"),
        ({"avx512f", "avx512_bf16"}, "cpu", "bfloat16"),
        # AVX512 alone emulates bf16: slower than float32.
        ({"avx2", "avx512f"}, "cpu", "float32"),
        (set(), "cpu", "float32"),
        # Only CPUs are judged by their flags.
        ({"amx_bf16"}, "cuda", "float32"),
    ],
)
def test_auto_picks_bfloat16_only_where_the_cpu_does_it_natively(flags: set[str], device: str, expected: str) -> None:
    assert resolved_dtype("auto", device, frozenset(flags)) == expected


def test_an_explicit_dtype_is_kept_whatever_the_cpu() -> None:
    assert resolved_dtype("float32", "cpu", frozenset({"amx_bf16"})) == "float32"
    assert resolved_dtype("bfloat16", "cpu", frozenset()) == "bfloat16"


def test_an_unknown_dtype_is_refused_at_load() -> None:
    assert EmbeddingsEngineSettings().dtype == "auto"
    with pytest.raises(ValidationError, match="dtype"):
        EmbeddingsEngineSettings(dtype="float16")  # type: ignore[arg-type]
