"""A stable hash of a key to [0, 1): the same user or session lands on the
same A/B arm and the same side of a canary on every replica and restart
(Python's hash() is salted per process, so it cannot be used)."""

from __future__ import annotations

import hashlib


def unit_interval(*parts: str) -> float:
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64
