"""Fixtures shared by every test layer, and the layer marks themselves."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from headrace.local.redis_server import RedisServer

# The layer a test belongs to is the folder it lives in: tests/unit,
# tests/integration or tests/e2e. Marked here, once, so a test cannot be
# missed by `pytest -m unit` (make test-unit) for want of a hand-written mark.
LAYERS = ("unit", "integration", "e2e")
_TESTS_ROOT = Path(__file__).parent


def layer_of(path: Path) -> str | None:
    """unit, integration or e2e for a test file under tests/; None elsewhere."""
    try:
        folder = path.relative_to(_TESTS_ROOT).parts[0]
    except ValueError:
        return None
    return folder if folder in LAYERS else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        layer = layer_of(item.path)
        if layer is not None:
            item.add_marker(getattr(pytest.mark, layer))


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
