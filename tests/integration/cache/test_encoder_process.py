"""The embedding model in its own process (cache.semantic.embedder:
process): the same vectors as in-process, token counting here, and a child
that dies fails only its batch; the next one starts a new child."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from services.cache.embedder import MiniLmEncoder
from services.cache.encoder_process import ProcessEncoder

pytestmark = pytest.mark.slow


def test_the_child_embeds_as_the_model_does_and_survives_a_crash(minilm: MiniLmEncoder) -> None:
    encoder = ProcessEncoder()
    try:
        texts = ["How do I reset my password?", "Why is the sky blue? " * 5, "x"]
        assert encoder.model_id == minilm.model_id and encoder.dimension == minilm.dimension
        np.testing.assert_allclose(encoder.encode(texts), minilm.encode(texts), atol=1e-5)
        for text in ("short", "word " * 250, "word " * 300):
            assert encoder.fits(text) == minilm.fits(text)
        first = encoder.pid
        assert first is not None and first != os.getpid()
        os.kill(first, signal.SIGKILL)
        # The batch the child had fails (or, seen dead before sending, a new
        # child takes it); either way the next batch is embedded.
        try:
            encoder.encode(texts)
        except RuntimeError as exc:
            assert "embedding process" in str(exc)
        np.testing.assert_allclose(encoder.encode(texts[:1]), minilm.encode(texts[:1]), atol=1e-5)
        assert encoder.pid not in (None, first)
    finally:
        encoder.close()


def test_the_child_runs_below_the_cache_when_asked() -> None:
    encoder = ProcessEncoder(nice=7)
    try:
        assert encoder.pid is not None
        assert os.getpriority(os.PRIO_PROCESS, encoder.pid) == os.getpriority(os.PRIO_PROCESS, 0) + 7
        assert encoder.encode(["still embeds"]).shape == (1, encoder.dimension)
    finally:
        encoder.close()
