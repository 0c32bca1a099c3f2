"""A trace with the shape production traffic has, from data we ship
(headrace/workload/data/paraphrase-pairs.json: 999 sentences, each with a
paraphrase; from GPTCache's benchmark data), deterministic for a seed.

The shape, and the parameter behind each part (`WorkloadShape`):
- arrivals: a Poisson process at `rate_rps`, or `bursty` (on/off periods,
  `burst_factor` times the rate while on, the same mean overall); a rate
  profile on top: `steady`, or `ramp` (after `lead_s` at the base rate, up
  to `peak_factor` x over `ramp_s`, held `hold_s`, back down over `ramp_s`:
  the autoscaler's test);
- repeats: `repeat_share` of requests ask an earlier question again word for
  word, `paraphrase_share` in other words; which earlier question follows a
  Zipf law (`zipf_s`): a few are asked very often, most once;
- prompts: `long_share` carry one of `system_prompts` shared long system
  prompts (several thousand characters: prefix caching's case), the rest a
  short one; `hard_share` ask for a longer, reasoned answer;
- lanes: `batch_share` go to the batch lane (replied within a window);
- tenants: `tenants` share the traffic by weight.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Literal

from headrace.workload.trace import Difficulty, Origin, TraceMessage, TraceRecord

Arrivals = Literal["poisson", "bursty"]
Profile = Literal["steady", "ramp"]

_EASY = ("Summarise in one short sentence: {text}", 32)
_HARD = ("Explain step by step, with one example, what this means and why it matters: {text}", 128)
_SHORT_SYSTEM = "You are a helpful assistant. Answer briefly."


def load_pairs() -> list[tuple[str, str]]:
    """(sentence, paraphrase) pairs shipped with the package."""
    text = resources.files("headrace.workload").joinpath("data/paraphrase-pairs.json").read_text(encoding="utf-8")
    return [(pair["origin"], pair["similar"]) for pair in json.loads(text)]


@dataclass(frozen=True)
class WorkloadShape:
    seed: int = 0
    duration_s: float = 60.0
    rate_rps: float = 2.0
    arrivals: Arrivals = "poisson"
    burst_factor: float = 4.0
    burst_period_s: float = 5.0
    profile: Profile = "steady"
    peak_factor: float = 10.0
    # ramp: seconds at the base rate before it starts rising.
    lead_s: float = 0.0
    ramp_s: float = 20.0
    hold_s: float = 20.0
    repeat_share: float = 0.2
    paraphrase_share: float = 0.2
    zipf_s: float = 1.1
    long_share: float = 0.3
    system_prompts: int = 3
    hard_share: float = 0.2
    batch_share: float = 0.1
    tenants: Sequence[tuple[str, float]] = field(default_factory=lambda: (("default", 1.0),))

    def __post_init__(self) -> None:
        if self.duration_s <= 0 or self.rate_rps <= 0:
            raise ValueError("duration_s and rate_rps must be positive")
        for name in ("repeat_share", "paraphrase_share", "long_share", "hard_share", "batch_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1]")
        if self.repeat_share + self.paraphrase_share > 1.0:
            raise ValueError("repeat_share + paraphrase_share must not exceed 1")
        if self.burst_factor < 1 or self.peak_factor < 1:
            raise ValueError("burst_factor and peak_factor must be at least 1")
        if not self.tenants or any(weight <= 0 for _, weight in self.tenants):
            raise ValueError("tenants need positive weights")

    def rate_at(self, t: float) -> float:
        """The profile's request rate at t (before bursts)."""
        if self.profile == "steady":
            return self.rate_rps
        t -= self.lead_s
        if t < 0:
            return self.rate_rps
        up_end, hold_end, down_end = self.ramp_s, self.ramp_s + self.hold_s, 2 * self.ramp_s + self.hold_s
        extra = self.peak_factor - 1.0
        if t < up_end:
            factor = 1.0 + extra * (t / self.ramp_s if self.ramp_s else 1.0)
        elif t < hold_end:
            factor = self.peak_factor
        elif t < down_end:
            factor = self.peak_factor - extra * ((t - hold_end) / self.ramp_s if self.ramp_s else 1.0)
        else:
            factor = 1.0
        return self.rate_rps * factor


def arrival_times(shape: WorkloadShape, rng: random.Random) -> Iterator[float]:
    """A non-homogeneous Poisson process by thinning: candidates at the
    highest rate, each kept with probability rate(t) / highest."""
    peak = shape.rate_rps * (shape.peak_factor if shape.profile == "ramp" else 1.0)
    if shape.arrivals == "bursty":
        peak *= shape.burst_factor
    on = True
    # Bursty: on/off periods of exponential length; while on, the rate is
    # burst_factor x, while off what keeps the mean equal (at least 0).
    switch_at = rng.expovariate(1.0 / shape.burst_period_s) if shape.arrivals == "bursty" else math.inf
    on_share = 1.0 / shape.burst_factor
    t = 0.0
    while True:
        t += rng.expovariate(peak)
        if t >= shape.duration_s:
            return
        while t >= switch_at:
            on = not on
            mean = shape.burst_period_s * (on_share if on else 1.0 - on_share) * 2
            switch_at += rng.expovariate(1.0 / max(mean, 1e-3))
        rate = shape.rate_at(t)
        if shape.arrivals == "bursty":
            rate = rate * shape.burst_factor if on else 0.0
        if rng.random() * peak < rate:
            yield t


class _ZipfPicker:
    """Which earlier question a repeat asks again: rank r (1 = the first
    asked) with weight 1 / r^s, so early questions become the popular ones."""

    def __init__(self, s: float) -> None:
        self._s = s
        self._cumulative: list[float] = []

    def add(self) -> None:
        rank = len(self._cumulative) + 1
        previous = self._cumulative[-1] if self._cumulative else 0.0
        self._cumulative.append(previous + 1.0 / rank**self._s)

    def pick(self, rng: random.Random) -> int:
        target = rng.random() * self._cumulative[-1]
        low, high = 0, len(self._cumulative) - 1
        while low < high:
            middle = (low + high) // 2
            if self._cumulative[middle] < target:
                low = middle + 1
            else:
                high = middle
        return low


def system_prompts(pairs: Sequence[tuple[str, str]], count: int) -> list[str]:
    """Long shared system prompts: reference notes built from the data
    (each several thousand characters, all different)."""
    prompts = []
    for i in range(count):
        notes = " ".join(origin for origin, _ in pairs[i * 40 : (i + 1) * 40])
        prompts.append(f"You are assistant #{i + 1} of a documentation team. Reference notes: {notes}")
    return prompts


def generate(shape: WorkloadShape) -> Iterator[TraceRecord]:
    rng = random.Random(shape.seed)
    pairs = load_pairs()
    long_prompts = system_prompts(pairs, shape.system_prompts)
    # Questions come from the pairs past those the system prompts use, in a
    # seeded order; a group is one question with its paraphrase.
    order = list(range(shape.system_prompts * 40, len(pairs)))
    rng.shuffle(order)
    asked: list[tuple[int, str, Difficulty, bool, str]] = []  # (pair, system, difficulty, long, tenant)
    picker = _ZipfPicker(shape.zipf_s)
    names = [name for name, _ in shape.tenants]
    weights = [weight for _, weight in shape.tenants]
    for number, at_s in enumerate(arrival_times(shape, rng)):
        roll = rng.random()
        origin: Origin
        if asked and roll < shape.repeat_share:
            origin = "repeat"
        elif asked and roll < shape.repeat_share + shape.paraphrase_share:
            origin = "paraphrase"
        else:
            origin = "fresh"
        if origin == "fresh":
            pair = order[len(asked) % len(order)]
            is_long = rng.random() < shape.long_share
            system = rng.choice(long_prompts) if is_long and long_prompts else _SHORT_SYSTEM
            difficulty: Difficulty = "hard" if rng.random() < shape.hard_share else "easy"
            tenant = rng.choices(names, weights)[0]
            asked.append((pair, system, difficulty, is_long and bool(long_prompts), tenant))
            picker.add()
            group = len(asked) - 1
        else:
            group = picker.pick(rng)
        pair, system, difficulty, is_long, tenant = asked[group]
        template, max_tokens = _HARD if difficulty == "hard" else _EASY
        text = pairs[pair][1] if origin == "paraphrase" else pairs[pair][0]
        yield TraceRecord(
            id=f"r{number:06d}",
            at_s=round(at_s, 4),
            tenant=tenant,
            lane="batch" if rng.random() < shape.batch_share else "online",
            messages=(
                TraceMessage(role="system", content=system),
                TraceMessage(role="user", content=template.format(text=text)),
            ),
            max_tokens=max_tokens,
            temperature=0.0,
            origin=origin,
            group=group,
            difficulty=difficulty,
            long=is_long,
        )
