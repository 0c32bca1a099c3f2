"""What each arm of a split served (requests, errors, tokens, cost, a TTFT
histogram), kept in Redis so every router replica adds to the same
counters and a restart loses nothing. A canary judges its steps from
these; ListModels shows them.

TTFT goes into fixed geometric buckets (10% wide), so p95 can be summed
across replicas and read back within a few percent."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import redis.asyncio as aioredis

KEY_PREFIX = "headrace:routing:stats:"
_BUCKET_GROWTH = 1.1
_MAX_BUCKET = 200  # 1.1**200 ms: far beyond any deadline
_TTFT_FIELD = "ttft:"


def bucket_of(ttft_ms: float) -> int:
    if ttft_ms <= 1.0:
        return 0
    return min(_MAX_BUCKET, math.ceil(math.log(ttft_ms) / math.log(_BUCKET_GROWTH)))


def bucket_upper_ms(bucket: int) -> float:
    return float(_BUCKET_GROWTH**bucket)


@dataclass(frozen=True)
class Sample:
    """One request (or attempt) on one arm."""

    ok: bool
    ttft_ms: float | None = None
    total_ms: float | None = None
    completion_tokens: int = 0
    cost_usd: float = 0.0


@dataclass
class ArmSummary:
    requests: int = 0
    errors: int = 0
    ok: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    total_ms_sum: float = 0.0
    ttft_buckets: dict[int, int] = field(default_factory=dict)

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def cost_per_request(self) -> float:
        return self.cost_usd / self.ok if self.ok else 0.0

    @property
    def mean_total_ms(self) -> float:
        return self.total_ms_sum / self.ok if self.ok else 0.0

    def ttft_quantile_ms(self, q: float) -> float:
        """The q-quantile of TTFT, interpolated inside its bucket; 0 without data."""
        count = sum(self.ttft_buckets.values())
        if not count:
            return 0.0
        rank = q * count
        seen = 0
        for bucket in sorted(self.ttft_buckets):
            n = self.ttft_buckets[bucket]
            if seen + n >= rank:
                lower = 0.0 if bucket == 0 else bucket_upper_ms(bucket - 1)
                upper = bucket_upper_ms(bucket)
                return lower + (upper - lower) * ((rank - seen) / n)
            seen += n
        return bucket_upper_ms(max(self.ttft_buckets))

    @classmethod
    def from_hash(cls, raw: dict[bytes, bytes]) -> ArmSummary:
        summary = cls()
        for key_bytes, value_bytes in raw.items():
            key, value = key_bytes.decode(), value_bytes.decode()
            if key.startswith(_TTFT_FIELD):
                summary.ttft_buckets[int(key[len(_TTFT_FIELD) :])] = int(value)
            elif key in ("requests", "errors", "ok", "completion_tokens"):
                setattr(summary, key, int(value))
            elif key in ("cost_usd", "total_ms_sum"):
                setattr(summary, key, float(value))
        return summary


class ArmStatsStore:
    def __init__(self, redis: aioredis.Redis, *, ttl_s: int = 7 * 86400) -> None:
        self._redis = redis
        self._ttl_s = ttl_s

    async def record(self, key: str, sample: Sample) -> int:
        """Add one sample; returns the arm's request count after it."""
        full = KEY_PREFIX + key
        pipe = self._redis.pipeline(transaction=False)
        pipe.hincrby(full, "requests", 1)
        if sample.ok:
            pipe.hincrby(full, "ok", 1)
            pipe.hincrby(full, "completion_tokens", sample.completion_tokens)
            pipe.hincrbyfloat(full, "cost_usd", sample.cost_usd)
            if sample.total_ms is not None:
                pipe.hincrbyfloat(full, "total_ms_sum", sample.total_ms)
            if sample.ttft_ms is not None:
                pipe.hincrby(full, f"{_TTFT_FIELD}{bucket_of(sample.ttft_ms)}", 1)
        else:
            pipe.hincrby(full, "errors", 1)
        pipe.expire(full, self._ttl_s)
        results = await pipe.execute()
        return int(results[0])

    async def read(self, keys: Sequence[str]) -> list[ArmSummary]:
        pipe = self._redis.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(KEY_PREFIX + key)
        return [ArmSummary.from_hash(raw) for raw in await pipe.execute()]
