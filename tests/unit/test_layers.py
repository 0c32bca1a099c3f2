"""Tests are marked unit / integration / e2e by the folder they live in
(tests/conftest.py), not by hand."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import LAYERS, layer_of

TESTS = Path(__file__).parent.parent


def test_this_unit_test_carries_the_unit_mark_and_no_other_layer(request: pytest.FixtureRequest) -> None:
    marks = {mark.name for mark in request.node.iter_markers()}
    assert "unit" in marks and not marks & {"integration", "e2e"}


@pytest.mark.parametrize(
    ("path", "layer"),
    [
        (TESTS / "unit" / "runtime" / "test_interceptors.py", "unit"),
        (TESTS / "integration" / "batch" / "test_batch_http.py", "integration"),
        (TESTS / "e2e" / "test_cli_mesh.py", "e2e"),
        (TESTS / "support" / "mesh.py", None),
        (TESTS.parent / "bench" / "overhead.py", None),
    ],
)
def test_the_layer_is_the_folder(path: Path, layer: str | None) -> None:
    assert layer_of(path) == layer


def test_no_test_file_marks_its_layer_by_hand() -> None:
    marked = [
        str(path.relative_to(TESTS))
        for path in TESTS.rglob("test_*.py")
        if any(f"mark.{layer}" in path.read_text() for layer in LAYERS)
    ]
    assert marked == []
