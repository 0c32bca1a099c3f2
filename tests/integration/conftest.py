"""Fixtures of the integration layer."""

from __future__ import annotations

import pytest

from services.cache.embedder import MiniLmEncoder


@pytest.fixture(scope="session")
def minilm() -> MiniLmEncoder:
    """The real all-MiniLM-L6-v2, loaded once for the whole session."""
    return MiniLmEncoder()
