"""Per-tenant rate limits and quotas, kept in Redis so every router replica
enforces the same ones.

Three limits, each optional (RateLimitSettings):
- requests per minute: a token bucket of `rpm` requests refilled at rpm/60 per second;
- tokens per minute: a token bucket of `tpm` tokens refilled at tpm/60 per second;
- tokens per day: a counter per UTC day.

A request is admitted by one Lua script that checks all three and takes
from all or from none, so concurrent requests on any number of replicas
cannot overdraw. What a request will use is not known up front: admission
reserves an estimate (prompt tokens + max_tokens) and `settle` corrects
the reservation with the real usage once the answer is done. A bucket may
go into debt (a request larger than a minute's worth, or a longer answer
than reserved); later requests then wait until it refills. Time comes from
Redis (TIME), one clock for every replica.

When Redis cannot be reached, requests are admitted (logged and counted):
the limiter must never take the API down with it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Final

import redis.asyncio as aioredis
from prometheus_client import Counter
from redis.exceptions import RedisError

from headrace.runtime.config import RateLimitSettings
from headrace.runtime.errors import RateLimited
from headrace.runtime.redis_pool import pooled_redis

log = logging.getLogger(__name__)

_REJECTED = Counter("headrace_rate_limited_total", "Requests refused by a rate limit or quota", ["tenant", "limit"])
_LIMITER_ERRORS = Counter("headrace_rate_limiter_errors_total", "Limiter calls that failed (requests admitted)", ["op"])

# Give up on Redis after this long and admit: a slow limiter must not slow every request.
REDIS_TIMEOUT_S: Final = 0.5

# KEYS: requests bucket, tokens bucket, daily quota counter (one per UTC day)
# ARGV: requests per minute, tokens per minute, tokens per day (0: no limit), tokens to reserve
# Returns {admitted (1/0), retry_after_ms, limit that refused ("" if admitted), detail}
_ADMIT = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) + tonumber(now_parts[2]) / 1000000
local rpm = tonumber(ARGV[1])
local tpm = tonumber(ARGV[2])
local tpd = tonumber(ARGV[3])
local reserve = tonumber(ARGV[4])
local seconds_to_midnight = 86400 - (now % 86400)

local function level(key, capacity)
  local state = redis.call('HMGET', key, 'level', 'ts')
  local value = tonumber(state[1])
  local ts = tonumber(state[2])
  if value == nil then return capacity end
  return math.min(capacity, value + math.max(0, now - ts) * capacity / 60)
end

local retry_ms = 0
local refused = ''
local detail = ''
local requests_level, tokens_level, used_today, needed = 0, 0, 0, 0

if rpm > 0 then
  requests_level = level(KEYS[1], rpm)
  if requests_level < 1 then
    retry_ms = math.max(retry_ms, math.ceil((1 - requests_level) * 60000 / rpm))
    refused = 'requests_per_minute'
    detail = rpm .. ' requests per minute'
  end
end
if tpm > 0 then
  tokens_level = level(KEYS[2], tpm)
  -- A request larger than the bucket waits for a full bucket, not forever.
  needed = math.max(1, math.min(reserve, tpm))
  if tokens_level < needed then
    retry_ms = math.max(retry_ms, math.ceil((needed - tokens_level) * 60000 / tpm))
    refused = 'tokens_per_minute'
    detail = tpm .. ' tokens per minute'
  end
end
if tpd > 0 then
  used_today = tonumber(redis.call('GET', KEYS[3]) or '0')
  if used_today + reserve > tpd then
    retry_ms = math.max(retry_ms, math.ceil(seconds_to_midnight * 1000))
    refused = 'tokens_per_day'
    detail = 'a daily quota of ' .. tpd .. ' tokens (' .. used_today .. ' used today, this request may use '
      .. reserve .. ')'
  end
end
if refused ~= '' then
  return {0, retry_ms, refused, detail}
end

if rpm > 0 then
  redis.call('HSET', KEYS[1], 'level', tostring(requests_level - 1), 'ts', tostring(now))
  redis.call('EXPIRE', KEYS[1], 120)
end
if tpm > 0 then
  redis.call('HSET', KEYS[2], 'level', tostring(tokens_level - reserve), 'ts', tostring(now))
  redis.call('EXPIRE', KEYS[2], 120 + math.ceil(math.max(0, reserve - tokens_level) * 60 / tpm))
end
if tpd > 0 then
  redis.call('INCRBY', KEYS[3], reserve)
  redis.call('EXPIRE', KEYS[3], math.ceil(seconds_to_midnight) + 3600)
end
return {1, 0, '', ''}
"""

# KEYS: tokens bucket, daily quota counter (of the day the request was admitted)
# ARGV: tokens per minute, tokens per day (0: no limit), used - reserved (may be negative)
_SETTLE = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) + tonumber(now_parts[2]) / 1000000
local tpm = tonumber(ARGV[1])
local tpd = tonumber(ARGV[2])
local delta = tonumber(ARGV[3])
if tpm > 0 then
  local state = redis.call('HMGET', KEYS[1], 'level', 'ts')
  local value = tonumber(state[1])
  local ts = tonumber(state[2])
  if value == nil then value = tpm; ts = now end
  value = math.min(tpm, value + math.max(0, now - ts) * tpm / 60)
  value = math.min(tpm, value - delta)
  redis.call('HSET', KEYS[1], 'level', tostring(value), 'ts', tostring(now))
  redis.call('EXPIRE', KEYS[1], 120 + math.ceil(math.max(0, -value) * 60 / tpm))
end
if tpd > 0 and redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('INCRBY', KEYS[2], delta)
end
return 1
"""


@dataclass(frozen=True)
class Reservation:
    """What admission took from a tenant's limits; settle it once the usage is known."""

    tenant: str
    limits: RateLimitSettings
    reserved_tokens: int
    # The quota counter of the day the request was admitted.
    quota_key: str

    @property
    def counts_tokens(self) -> bool:
        return self.limits.tokens_per_minute is not None or self.limits.tokens_per_day is not None


def connect_limiter_redis(url: str, *, timeout_s: float = REDIS_TIMEOUT_S) -> aioredis.Redis:
    """A Redis client whose calls give up after timeout_s (then the limiter admits)."""
    return pooled_redis(
        url, max_connections=64, wait_s=timeout_s, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
    )


class TenantRateLimiter:
    def __init__(self, redis: aioredis.Redis, *, key_prefix: str = "headrace:ratelimit") -> None:
        self._redis = redis
        self._prefix = key_prefix
        self._admit = redis.register_script(_ADMIT)
        self._settle = redis.register_script(_SETTLE)

    def _keys(self, tenant: str) -> tuple[str, str, str]:
        # The tenant in braces: all of its keys hash to one Redis Cluster slot,
        # as a script's keys must. The day's counter is named by this
        # router's clock (a key must be named before the script runs);
        # replicas whose clocks differ by seconds disagree only for those
        # seconds around midnight.
        base = f"{self._prefix}:{{{tenant}}}"
        day = time.strftime("%Y%m%d", time.gmtime())
        return f"{base}:requests", f"{base}:tokens", f"{base}:day:{day}"

    async def admit(self, tenant: str, limits: RateLimitSettings, *, reserve_tokens: int) -> Reservation | None:
        """Take one request and `reserve_tokens` tokens from the tenant's
        limits, or raise RateLimited (with retry_after_s) and take nothing.
        None: the tenant has no limits, nothing to settle."""
        if limits.unlimited:
            return None
        requests_key, tokens_key, day_key = self._keys(tenant)
        reserve = max(0, reserve_tokens)
        try:
            admitted, retry_ms, refused, detail = await self._admit(
                keys=[requests_key, tokens_key, day_key],
                args=[
                    limits.requests_per_minute or 0,
                    limits.tokens_per_minute or 0,
                    limits.tokens_per_day or 0,
                    reserve,
                ],
            )
        except (RedisError, OSError, TimeoutError) as exc:
            _LIMITER_ERRORS.labels(op="admit").inc()
            log.warning("rate limiter unavailable (%s); admitting the request", exc)
            return None
        if not int(admitted):
            limit = _text(refused)
            _REJECTED.labels(tenant=tenant, limit=limit).inc()
            raise RateLimited(
                f"rate limit: tenant {tenant!r} is over {_text(detail)}; retry later",
                retry_after_s=int(retry_ms) / 1000.0,
            )
        return Reservation(tenant=tenant, limits=limits, reserved_tokens=reserve, quota_key=day_key)

    async def settle(self, reservation: Reservation, *, used_tokens: int) -> None:
        """Replace the reservation with what the request really used."""
        if not reservation.counts_tokens:
            return
        delta = max(0, used_tokens) - reservation.reserved_tokens
        if delta == 0:
            return
        _requests_key, tokens_key, _day_key = self._keys(reservation.tenant)
        try:
            await self._settle(
                keys=[tokens_key, reservation.quota_key],
                args=[reservation.limits.tokens_per_minute or 0, reservation.limits.tokens_per_day or 0, delta],
            )
        except (RedisError, OSError, TimeoutError) as exc:
            _LIMITER_ERRORS.labels(op="settle").inc()
            log.warning("rate limiter unavailable (%s); usage of tenant %s not settled", exc, reservation.tenant)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
