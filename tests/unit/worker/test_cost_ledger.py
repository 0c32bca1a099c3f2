"""The token-share ledger: each window of engine time split among the
sequences by the weighted tokens they processed in it; every busy second
charged once, idle time never."""

from __future__ import annotations

import pytest

from services.worker.cost_ledger import TokenShareLedger


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_long_prefill_pays_more_of_the_step_it_shares() -> None:
    clock = Clock()
    ledger = TokenShareLedger(prefill_token_weight=0.25, settle_interval_s=1000, clock=clock)
    ledger.start("long")
    ledger.start("short")
    clock.now += 1.0
    # One step: "long" computes a 2,000-token prompt, "short" a 4-token one; each decodes one token.
    ledger.processed("long", prefill_tokens=2000, decoded_tokens=1)
    ledger.processed("short", prefill_tokens=4, decoded_tokens=1)
    long_s, short_s = ledger.finish("long"), ledger.finish("short")
    assert long_s == pytest.approx(1.0 * 501 / 503)
    assert short_s == pytest.approx(1.0 * 2 / 503)
    assert long_s + short_s == pytest.approx(ledger.busy_seconds) == pytest.approx(1.0)


def test_decode_steps_are_split_by_tokens_and_idle_time_is_not_charged() -> None:
    clock = Clock()
    ledger = TokenShareLedger(prefill_token_weight=0.0, settle_interval_s=0.5, clock=clock)
    ledger.start("a")
    clock.now += 0.5
    ledger.processed("a", prefill_tokens=10, decoded_tokens=1)  # a alone: its 0.5 s
    ledger.start("b")
    clock.now += 1.0
    ledger.processed("a", prefill_tokens=0, decoded_tokens=3)
    ledger.processed("b", prefill_tokens=10, decoded_tokens=1)  # 1 s split 3:1
    a = ledger.finish("a")
    clock.now += 7.0  # b alone, but it reported nothing: still its time
    b = ledger.finish("b")
    clock.now += 60.0  # idle
    ledger.start("c")
    clock.now += 0.25
    c = ledger.finish("c")  # no tokens at all: the window is still c's
    assert a == pytest.approx(0.5 + 0.75)
    assert b == pytest.approx(0.25 + 7.0)
    assert c == pytest.approx(0.25)
    assert a + b + c == pytest.approx(ledger.busy_seconds) == pytest.approx(8.75)


def test_a_window_without_tokens_is_split_evenly() -> None:
    clock = Clock()
    ledger = TokenShareLedger(prefill_token_weight=1.0, clock=clock)
    for key in ("x", "y", "z"):
        ledger.start(key)
    clock.now += 3.0
    shares = [ledger.finish(key) for key in ("x", "y", "z")]
    assert shares == pytest.approx([1.0, 1.0, 1.0])
