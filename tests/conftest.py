"""Fixtures shared by every test layer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from headrace.local.redis_server import RedisServer


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(Path(tmp_path_factory.mktemp("redis")))
    server.start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test reads the developer's config or state."""
    for name in ("HEADRACE_CONFIG", "HEADRACE_ENGINE_OVERRIDE", "HEADRACE_API_KEY", "HEADRACE_INTERNAL_TLS__CERTS_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HEADRACE_STATE_DIR", str(tmp_path / "state"))
