"""A batch row's call waits for others only while many rows hold leases
(call_window.py): a batch filling the pool shares calls, a handful of rows
(a small batch share beside online work) goes at once."""

from __future__ import annotations

import pytest

from services.worker.consumer.call_window import CallWindow


@pytest.mark.parametrize(
    ("held", "window_ms"),
    [(0, 0.0), (4, 1.5625), (128, 50.0), (256, 100.0), (300, 100.0)],
)
def test_the_window_scales_with_the_rows_holding_leases(held: int, window_ms: float) -> None:
    window = CallWindow(0.1, held=lambda: held, max_rows=256)
    assert window() == pytest.approx(window_ms / 1000.0)


def test_the_window_follows_the_rows_as_they_change() -> None:
    rows = [200]
    window = CallWindow(0.1, held=lambda: rows[0], max_rows=200)
    assert window() == pytest.approx(0.1)
    rows[0] = 2
    assert window() == pytest.approx(0.001)
