"""Fixtures of the end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import headrace, mesh_env


@pytest.fixture
def cli_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """Environment for a mesh driven by the CLI on private ports and state;
    whatever the test started is stopped afterwards."""
    env = mesh_env(tmp_path / "state")
    yield env
    headrace(env, "down", timeout=120)
