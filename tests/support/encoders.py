"""Embedding models for tests: the real all-MiniLM-L6-v2, loaded once per
session, and a wrapper that counts what reaches it (to check that the
embedding cache saves model calls)."""

from __future__ import annotations

from services.cache.embedder import TextEncoder, Vectors


class CountingEncoder:
    """The wrapped encoder, unchanged, with a count of the texts it embedded."""

    def __init__(self, inner: TextEncoder) -> None:
        self._inner = inner
        self.texts: list[str] = []

    @property
    def model_id(self) -> str:
        return self._inner.model_id

    @property
    def dimension(self) -> int:
        return self._inner.dimension

    def fits(self, text: str) -> bool:
        return self._inner.fits(text)

    def encode(self, texts: list[str]) -> Vectors:
        self.texts.extend(texts)
        return self._inner.encode(texts)
