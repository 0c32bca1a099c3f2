"""Batch jobs, their rows and results, and files, in Redis.

Every key starts with the configured prefix. Per job:

    job:{id}            hash   the job (status, counts, timestamps, ...)
    job:{id}:rows       hash   row index -> line, custom_id and the request (protobuf)
    job:{id}:out        hash   row index -> BatchResult: written once (HSETNX)
    job:{id}:events     stream one entry per finished row, in finishing order
    job:{id}:started    hash   row index -> consumer that first started it
    job:{id}:attempts   hash   row index -> attempts so far (survives redelivery)
    job:{id}:lasterr    hash   row index -> why its last attempt failed
    tenant:{t}:jobs     zset   the tenant's job ids by creation time
    pool:{pool}:pending string rows accepted and not finished (the queue bound)
    active              zset   unfinished job ids by expiry time
    file:{id}           hash   a file (input, or a job's output or error file)
    file:{id}:content   string an input file's bytes

What must not be torn apart runs as one Lua script: a row's result is
written, counted and announced at once (and only the first time), and the
row that finishes a job flips its status in the same step. So a consumer
killed at any point leaves either nothing or the whole of it.
"""

from __future__ import annotations

import json
import math
import re
import struct
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from headrace.runtime.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from headrace.runtime.redis_pool import pooled_redis
from headrace.v1 import batch_pb2

TERMINAL_STATUSES = frozenset({"failed", "completed", "expired", "cancelled"})
INPUT, OUTPUT, ERROR = "input", "output", "error"


def open_redis(url: str) -> aioredis.Redis:
    """A client that rides out a Redis restart: commands are retried with
    backoff for about half a minute before an error surfaces. Every write
    the batch code makes is idempotent, so a retried one does no harm. For
    work nobody waits on (the consumers); callers get open_redis_for_requests."""
    return pooled_redis(
        url,
        # Rows of every chunk a consumer runs share these; one past them
        # waits for a free one (redis_pool.py).
        max_connections=32,
        wait_s=30.0,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=40),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        socket_connect_timeout=2.0,
        health_check_interval=5,
    )


def open_redis_for_requests(url: str, *, timeout_s: float) -> aioredis.Redis:
    """A client for the request path, where a caller waits: every connect
    and every read gives up after timeout_s, so Redis down (refused) or
    frozen (connected, silent) surfaces at once as a RedisError that
    `store_unavailable` turns into a 503 the caller may retry. One quick
    retry on a refused or reset connection: a pooled connection that a
    Redis restart closed is replaced without the caller seeing it."""
    return pooled_redis(
        url,
        max_connections=64,
        wait_s=timeout_s,
        # Only connection errors: a read that timed out is not retried
        # (Retry's default would, doubling the wait on a frozen Redis).
        retry=Retry(NoBackoff(), retries=1, supported_errors=(RedisConnectionError,)),
        socket_connect_timeout=timeout_s,
        socket_timeout=timeout_s,
    )


# What a Redis that is down, restarting or frozen raises (BusyLoadingError,
# while it loads its data, is a ConnectionError).
STORE_DOWN_ERRORS: tuple[type[Exception], ...] = (RedisConnectionError, RedisTimeoutError)


def store_unavailable(exc: Exception, *, retry_after_s: float) -> Unavailable:
    """The Headrace error for a batch store that does not answer (503 /
    UNAVAILABLE with retry-after, from the one error table)."""
    return Unavailable(f"the batch store (Redis) does not answer ({type(exc).__name__})", retry_after_s=retry_after_s)


def _text(value: object) -> str:
    """A script's reply as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


# What ids look like: anything else is not found (and never becomes part of a key).
_BATCH_ID = re.compile(r"^batch_[0-9a-f]{32}$")
_FILE_ID = re.compile(r"^file-[0-9a-f]{24}$")


def new_batch_id() -> str:
    return f"batch_{uuid.uuid4().hex}"


def new_file_id() -> str:
    return f"file-{uuid.uuid4().hex[:24]}"


@dataclass
class FileRecord:
    id: str
    tenant: str
    filename: str
    # "batch" for inputs, "batch_output" for output and error files.
    purpose: str
    bytes: int
    created_at: int
    kind: str = INPUT
    # The job an output or error file belongs to.
    batch_id: str = ""


@dataclass
class JobRecord:
    id: str
    tenant: str
    status: str
    endpoint: str
    model_version: str
    pool: str
    input_file_id: str
    # Reserved at submit; shown once the job has ended with such rows.
    output_file_id: str
    error_file_id: str
    total: int
    chunk_rows: int
    completion_window: str
    created_at: int
    expires_at: int
    completed: int = 0
    failed: int = 0
    metadata: dict[str, str] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)
    in_progress_at: int = 0
    finalizing_at: int = 0
    completed_at: int = 0
    failed_at: int = 0
    cancelling_at: int = 0
    cancelled_at: int = 0
    expired_at: int = 0

    @property
    def chunks(self) -> int:
        return math.ceil(self.total / self.chunk_rows)

    def chunk(self, index: int) -> range:
        """Row indexes of one chunk."""
        start = index * self.chunk_rows
        return range(start, min(self.total, start + self.chunk_rows))

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


@dataclass(frozen=True)
class StoredRow:
    index: int
    line: int
    custom_id: str
    # A serialized GenerateRequest or EmbedRequest (per the job's endpoint).
    request: bytes


_ROW_HEADER = struct.Struct(">II")


def encode_row(line: int, custom_id: str, request: bytes) -> bytes:
    cid = custom_id.encode()
    return _ROW_HEADER.pack(line, len(cid)) + cid + request


def decode_row(index: int, data: bytes) -> StoredRow:
    line, cid_len = _ROW_HEADER.unpack_from(data)
    start = _ROW_HEADER.size
    return StoredRow(
        index=index,
        line=line,
        custom_id=data[start : start + cid_len].decode(),
        request=data[start + cid_len :],
    )


_JSON_FIELDS = {"metadata", "errors"}
_INT_FIELDS = {f.name for f in fields(JobRecord) if f.type in ("int", int)}


def _job_to_hash(job: JobRecord) -> dict[Any, str]:
    return {key: json.dumps(value) if key in _JSON_FIELDS else str(value) for key, value in asdict(job).items()}


def _job_from_hash(data: dict[bytes, bytes]) -> JobRecord:
    values: dict[str, Any] = {}
    for raw_key, raw_value in data.items():
        key, value = raw_key.decode(), raw_value.decode()
        if key in _JSON_FIELDS:
            values[key] = json.loads(value)
        elif key in _INT_FIELDS:
            values[key] = int(value)
        else:
            values[key] = value
    return JobRecord(**values)


def _file_from_hash(data: dict[bytes, bytes]) -> FileRecord:
    values = {k.decode(): v.decode() for k, v in data.items()}
    return FileRecord(
        id=values["id"],
        tenant=values["tenant"],
        filename=values["filename"],
        purpose=values["purpose"],
        bytes=int(values["bytes"]),
        created_at=int(values["created_at"]),
        kind=values.get("kind", INPUT),
        batch_id=values.get("batch_id", ""),
    )


# Keys of one job, in the order every job script expects them.
#   KEYS: 1 job, 2 rows, 3 out, 4 events, 5 started, 6 attempts, 7 lasterr,
#         8 pool pending, 9 active, 10 output file, 11 error file
#   ARGV: 1 job id, 2 now (unix s), 3 retention (s), then the script's own.
_LUA_COMMON = """
local function finish(status, stamp)
  redis.call('HSET', KEYS[1], 'status', status, stamp, ARGV[2])
  redis.call('ZREM', KEYS[9], ARGV[1])
  for i = 1, 7 do redis.call('EXPIRE', KEYS[i], ARGV[3]) end
  redis.call('EXPIRE', KEYS[10], ARGV[3])
  redis.call('EXPIRE', KEYS[11], ARGV[3])
end
local function unfinished()
  local total = tonumber(redis.call('HGET', KEYS[1], 'total') or '0')
  return total - redis.call('HLEN', KEYS[3])
end
local function settle()
  local status = redis.call('HGET', KEYS[1], 'status')
  if status == 'in_progress' and unfinished() <= 0 then
    redis.call('HSET', KEYS[1], 'finalizing_at', ARGV[2])
    finish('completed', 'completed_at')
    return 'completed'
  end
  if status == 'cancelling' and redis.call('HLEN', KEYS[3]) >= redis.call('HLEN', KEYS[5]) then
    -- Every row that started has its result: the rest never will run.
    redis.call('DECRBY', KEYS[8], unfinished())
    finish('cancelled', 'cancelled_at')
    return 'cancelled'
  end
  return status or ''
end
local function expire_if_due()
  local status = redis.call('HGET', KEYS[1], 'status')
  local expires_at = tonumber(redis.call('HGET', KEYS[1], 'expires_at') or '0')
  if (status == 'in_progress' or status == 'cancelling') and tonumber(ARGV[2]) >= expires_at then
    redis.call('DECRBY', KEYS[8], unfinished())
    if status == 'cancelling' then
      finish('cancelled', 'cancelled_at')
      return 'cancelled'
    end
    finish('expired', 'expired_at')
    return 'expired'
  end
  return status
end
"""

# ARGV 4: row index, 5: the consumer's name -> {verdict, attempt}
_BEGIN_ATTEMPT = (
    _LUA_COMMON
    + """
if redis.call('HEXISTS', KEYS[3], ARGV[4]) == 1 then return {'done', 0} end
local status = expire_if_due()
if status ~= 'in_progress' then
  if status and redis.call('HEXISTS', KEYS[5], ARGV[4]) == 1 then return {'orphan', 0} end
  return {'skip', 0}
end
redis.call('HSETNX', KEYS[5], ARGV[4], ARGV[5])
return {'run', redis.call('HINCRBY', KEYS[6], ARGV[4], 1)}
"""
)

# ARGV 4: row index, 5: BatchResult bytes, 6: '1' ok / '0' error -> {written, status}
_RECORD = (
    _LUA_COMMON
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {0, ''} end
if redis.call('HSETNX', KEYS[3], ARGV[4], ARGV[5]) == 0 then return {0, status} end
redis.call('HINCRBY', KEYS[1], ARGV[6] == '1' and 'completed' or 'failed', 1)
redis.call('XADD', KEYS[4], '*', 'row', ARGV[4])
if status == 'in_progress' or status == 'cancelling' then redis.call('DECR', KEYS[8]) end
return {1, settle()}
"""
)

# ARGV 4: tenant -> the status after the call ('' when no such job)
_CANCEL = (
    _LUA_COMMON
    + """
if redis.call('HGET', KEYS[1], 'tenant') ~= ARGV[4] then return '' end
local status = expire_if_due()
if status == 'in_progress' then
  redis.call('HSET', KEYS[1], 'status', 'cancelling', 'cancelling_at', ARGV[2])
  return settle()
end
return status
"""
)

# ARGV 4: errors (JSON) -> the status after the call
_FAIL = (
    _LUA_COMMON
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'in_progress' and status ~= 'cancelling' then return status or '' end
redis.call('HSET', KEYS[1], 'errors', ARGV[4])
redis.call('DECRBY', KEYS[8], unfinished())
finish('failed', 'failed_at')
return 'failed'
"""
)

_EXPIRE = (
    _LUA_COMMON
    + """
return expire_if_due() or ''
"""
)

# KEYS 1: pool pending; ARGV 1: rows, 2: limit -> the new count, or -1 when over
_RESERVE = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current + tonumber(ARGV[1]) > tonumber(ARGV[2]) then return -1 end
return redis.call('INCRBY', KEYS[1], ARGV[1])
"""


@dataclass(frozen=True)
class AttemptVerdict:
    # "run": go (attempt is its number); "done": the row has its result;
    # "skip": the job no longer runs rows; "orphan": the row started but the
    # job stopped (cancelled, expired) before it finished: record why.
    verdict: str
    attempt: int = 0


class BatchStore:
    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        prefix: str,
        retention_s: int,
        clock: Callable[[], float] = time.time,
        max_block_ms: int | None = None,
    ) -> None:
        self._redis = redis
        # A blocking read waits at most this long: under a client's read
        # timeout, or the wait itself would read as Redis gone.
        self._max_block_ms = max_block_ms
        self._prefix = prefix
        self._retention_s = retention_s
        self._clock = clock
        self._begin = redis.register_script(_BEGIN_ATTEMPT)
        self._record = redis.register_script(_RECORD)
        self._cancel = redis.register_script(_CANCEL)
        self._fail = redis.register_script(_FAIL)
        self._expire = redis.register_script(_EXPIRE)
        self._reserve = redis.register_script(_RESERVE)

    @property
    def redis(self) -> aioredis.Redis:
        return self._redis

    def now(self) -> int:
        return int(self._clock())

    async def _hgetall(self, key: str) -> dict[bytes, bytes]:
        # The client returns bytes (decode_responses is off); its stubs say less.
        return cast(dict[bytes, bytes], await self._redis.hgetall(key))

    # -- keys

    def _key(self, *parts: str) -> str:
        return self._prefix + ":".join(parts)

    def job_key(self, batch_id: str, part: str = "") -> str:
        return self._key("job", batch_id, part) if part else self._key("job", batch_id)

    def _file_key(self, file_id: str) -> str:
        return self._key("file", file_id)

    def _pending_key(self, pool: str) -> str:
        return self._key("pool", pool, "pending")

    def _tenant_jobs_key(self, tenant: str) -> str:
        return self._key("tenant", tenant, "jobs")

    def _active_key(self) -> str:
        return self._key("active")

    def _job_script_keys(self, job: JobRecord) -> list[str]:
        return [
            self.job_key(job.id),
            *(self.job_key(job.id, part) for part in ("rows", "out", "events", "started", "attempts", "lasterr")),
            self._pending_key(job.pool),
            self._active_key(),
            self._file_key(job.output_file_id),
            self._file_key(job.error_file_id),
        ]

    def _job_script_args(self, job: JobRecord, *extra: str | bytes | int) -> list[str | bytes | int]:
        return [job.id, self.now(), self._retention_s, *extra]

    # -- files

    async def put_file(self, record: FileRecord, content: bytes | None = None, *, ttl_s: int | None = None) -> None:
        key = self._file_key(record.id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={k: str(v) for k, v in asdict(record).items()})
            if content is not None:
                pipe.set(key + ":content", content)
            if ttl_s is not None:
                pipe.expire(key, ttl_s)
                if content is not None:
                    pipe.expire(key + ":content", ttl_s)
            await pipe.execute()

    async def get_file(self, tenant: str, file_id: str) -> FileRecord:
        data = await self._hgetall(self._file_key(file_id)) if _FILE_ID.match(file_id) else {}
        if not data:
            raise NotFound(f"file {file_id!r} not found")
        record = _file_from_hash(data)
        if record.tenant != tenant:
            # Another tenant's file does not exist for this caller.
            raise NotFound(f"file {file_id!r} not found")
        return record

    async def input_content(self, record: FileRecord) -> bytes:
        content = cast(bytes | None, await self._redis.get(self._file_key(record.id) + ":content"))
        if content is None:
            raise NotFound(f"file {record.id!r} has no content (deleted or expired)")
        return bytes(content)

    async def delete_file(self, tenant: str, file_id: str) -> None:
        record = await self.get_file(tenant, file_id)
        await self._redis.delete(self._file_key(record.id), self._file_key(record.id) + ":content")

    # -- jobs

    async def reserve(self, pool: str, rows: int, limit: int) -> bool:
        """Count rows against the pool's queue bound; False when over it."""
        result = await self._reserve(keys=[self._pending_key(pool)], args=[rows, limit])
        return int(result) >= 0

    async def release(self, pool: str, rows: int) -> None:
        await self._redis.decrby(self._pending_key(pool), rows)

    async def pending(self, pool: str) -> int:
        value = await self._redis.get(self._pending_key(pool))
        return int(value or 0)

    async def create_job(self, job: JobRecord, rows: Sequence[bytes], files: Sequence[FileRecord]) -> None:
        """Write the job, its rows and its (reserved) files in one transaction."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.job_key(job.id), mapping=_job_to_hash(job))
            rows_key = self.job_key(job.id, "rows")
            for start in range(0, len(rows), 1000):
                pipe.hset(rows_key, mapping={str(i): rows[i] for i in range(start, min(len(rows), start + 1000))})
            # Milliseconds: jobs created within one second still list newest first.
            pipe.zadd(self._tenant_jobs_key(job.tenant), {job.id: round(self._clock() * 1000)})
            if job.terminal:
                # Failed validation: nothing will run; keep it for the retention period.
                pipe.expire(self.job_key(job.id), self._retention_s)
            else:
                pipe.zadd(self._active_key(), {job.id: job.expires_at})
            for record in files:
                pipe.hset(self._file_key(record.id), mapping={k: str(v) for k, v in asdict(record).items()})
            await pipe.execute()

    async def load_job(self, batch_id: str) -> JobRecord | None:
        data = await self._hgetall(self.job_key(batch_id))
        return _job_from_hash(data) if data else None

    async def get_job(self, tenant: str, batch_id: str) -> JobRecord:
        job = await self.load_job(batch_id) if _BATCH_ID.match(batch_id) else None
        if job is None or job.tenant != tenant:
            raise NotFound(f"batch {batch_id!r} not found")
        return job

    async def list_jobs(self, tenant: str, *, limit: int, after: str) -> tuple[list[JobRecord], bool]:
        """The tenant's jobs, newest first, starting after the job `after`."""
        key = self._tenant_jobs_key(tenant)
        start = 0
        if after:
            rank = cast(int | None, await self._redis.zrevrank(key, after))
            if rank is None:
                raise InvalidArgument(f"after: unknown batch id {after!r}")
            start = rank + 1
        jobs: list[JobRecord] = []
        while len(jobs) <= limit:
            ids = cast(list[bytes], await self._redis.zrevrange(key, start, start + limit))
            if not ids:
                return jobs, False
            start += len(ids)
            async with self._redis.pipeline(transaction=False) as pipe:
                for raw in ids:
                    pipe.hgetall(self.job_key(raw.decode()))
                found = cast(list[dict[bytes, bytes]], await pipe.execute())
            gone = [raw for raw, data in zip(ids, found, strict=True) if not data]
            if gone:
                # Jobs past their retention: drop them from the index too.
                await self._redis.zrem(key, *gone)
            jobs.extend(_job_from_hash(data) for data in found if data)
        return jobs[:limit], True

    async def cancel(self, tenant: str, batch_id: str) -> JobRecord:
        job = await self.get_job(tenant, batch_id)
        status = _text(await self._cancel(keys=self._job_script_keys(job), args=self._job_script_args(job, tenant)))
        if status in ("failed", "completed", "expired"):
            raise FailedPrecondition(f"batch {batch_id} has already ended ({status}); it cannot be cancelled")
        return await self.get_job(tenant, batch_id)

    async def fail(self, job: JobRecord, errors: list[dict[str, Any]]) -> None:
        await self._fail(keys=self._job_script_keys(job), args=self._job_script_args(job, json.dumps(errors)))

    async def expire_due(self) -> list[str]:
        """Expire the unfinished jobs past their completion window."""
        due = cast(list[bytes], await self._redis.zrangebyscore(self._active_key(), "-inf", self.now()))
        expired = []
        for raw in due:
            job = await self.load_job(raw.decode())
            if job is None:
                await self._redis.zrem(self._active_key(), raw)
                continue
            status = _text(await self._expire(keys=self._job_script_keys(job), args=self._job_script_args(job)))
            if status in ("expired", "cancelled"):
                expired.append(job.id)
        return expired

    # -- rows (the consumer's side)

    async def rows(self, batch_id: str, indexes: Sequence[int]) -> list[StoredRow]:
        if not indexes:
            return []
        fields_ = [str(i) for i in indexes]
        values = cast(list[bytes | None], await self._redis.hmget(self.job_key(batch_id, "rows"), fields_))
        return [decode_row(i, v) for i, v in zip(indexes, values, strict=True) if v is not None]

    async def unfinished(self, batch_id: str, indexes: Sequence[int]) -> list[int]:
        """Which of these rows have no result yet."""
        if not indexes:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for index in indexes:
                pipe.hexists(self.job_key(batch_id, "out"), str(index))
            done = await pipe.execute()
        return [index for index, finished in zip(indexes, done, strict=True) if not finished]

    async def begin_attempt(self, job: JobRecord, index: int, consumer: str) -> AttemptVerdict:
        verdict, attempt = await self._begin(
            keys=self._job_script_keys(job), args=self._job_script_args(job, index, consumer)
        )
        return AttemptVerdict(_text(verdict), int(attempt))

    async def undo_attempt(self, job: JobRecord, index: int) -> None:
        """An attempt that never reached the worker does not count."""
        await self._redis.hincrby(self.job_key(job.id, "attempts"), str(index), -1)

    async def note_failure(self, job: JobRecord, index: int, reason: str) -> None:
        await self._redis.hset(self.job_key(job.id, "lasterr"), str(index), reason)

    async def last_failure(self, job: JobRecord, index: int) -> str:
        value = cast(bytes | None, await self._redis.hget(self.job_key(job.id, "lasterr"), str(index)))
        return value.decode() if value else ""

    async def record(self, job: JobRecord, index: int, result: batch_pb2.BatchResult) -> tuple[bool, str]:
        """Write a row's result once; returns (written now, job status)."""
        ok = "0" if result.WhichOneof("outcome") == "error" else "1"
        written, status = await self._record(
            keys=self._job_script_keys(job),
            args=self._job_script_args(job, index, result.SerializeToString(), ok),
        )
        return bool(written), _text(status)

    # -- results

    async def results(self, batch_id: str) -> dict[int, batch_pb2.BatchResult]:
        """Every result so far, by row index."""
        data = await self._hgetall(self.job_key(batch_id, "out"))
        return {int(key): batch_pb2.BatchResult.FromString(value) for key, value in data.items()}

    async def all_rows(self, batch_id: str) -> list[StoredRow]:
        data = await self._hgetall(self.job_key(batch_id, "rows"))
        return sorted((decode_row(int(k), v) for k, v in data.items()), key=lambda row: row.index)

    async def result_events(
        self, batch_id: str, *, after: str, count: int, block_ms: int | None
    ) -> list[tuple[str, batch_pb2.BatchResult]]:
        """Results in finishing order after the event id `after` ("0": from
        the start); with block_ms, wait that long for the first new one."""
        key = self.job_key(batch_id, "events")
        entries: list[tuple[bytes, dict[bytes, bytes]]]
        if block_ms is None:
            entries = cast(Any, await self._redis.xrange(key, min=f"({after}" if after != "0" else "-", count=count))
        else:
            if self._max_block_ms is not None:
                block_ms = min(block_ms, self._max_block_ms)
            streams = cast(Any, await self._redis.xread({key: after}, count=count, block=block_ms))
            entries = streams[0][1] if streams else []
        if not entries:
            return []
        rows = [fields_[b"row"].decode() for _id, fields_ in entries]
        values = cast(list[bytes | None], await self._redis.hmget(self.job_key(batch_id, "out"), rows))
        return [
            (event_id.decode(), batch_pb2.BatchResult.FromString(value))
            for (event_id, _fields), value in zip(entries, values, strict=True)
            if value is not None
        ]

    async def started_count(self, batch_id: str) -> int:
        return int(await self._redis.hlen(self.job_key(batch_id, "started")))

    async def started_by(self, batch_id: str) -> dict[int, str]:
        data = await self._hgetall(self.job_key(batch_id, "started"))
        return {int(k): v.decode() for k, v in data.items()}
