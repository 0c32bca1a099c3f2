"""configure_logging: HTTP clients' per-request lines (the openai engine's
upstream calls) are DEBUG, not one INFO line per request."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import httpx2
import pytest

from headrace.runtime.telemetry import configure_logging


@pytest.fixture
def restored_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


async def one_request() -> None:
    transport = httpx2.MockTransport(lambda _: httpx2.Response(200, json={}))
    async with httpx2.AsyncClient(transport=transport) as client:
        await client.post("http://upstream.test/v1/chat/completions", json={})
    logging.getLogger("services.worker").info("worker line")


@pytest.mark.usefixtures("restored_root")
async def test_per_request_lines_are_not_logged_at_info(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("worker", "INFO")
    await one_request()
    logged = capsys.readouterr().err
    assert "worker line" in logged  # INFO still logs ...
    assert "HTTP Request" not in logged  # ... but not every upstream request


@pytest.mark.usefixtures("restored_root")
async def test_per_request_lines_are_debug_lines(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("worker", "DEBUG")
    await one_request()
    lines = [line for line in capsys.readouterr().err.splitlines() if "HTTP Request: POST" in line]
    assert len(lines) == 1 and " DEBUG worker httpx2 " in lines[0]
