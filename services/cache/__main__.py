"""python -m services.cache: the Cache service."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import redis.asyncio as redis
from opentelemetry.sdk.trace import TracerProvider

from headrace.runtime.aio import run
from headrace.runtime.config import Settings, load_settings
from headrace.runtime.redis_pool import pooled_redis
from headrace.runtime.server import GrpcServiceHost, ServiceRegistration, serve
from headrace.runtime.service_certs import Role
from headrace.runtime.service_identity import service_identity
from headrace.runtime.telemetry import build_tracer_provider, configure_logging, start_metrics_server
from headrace.v1 import cache_pb2_grpc
from services.cache.embedder import BatchingEmbedder, MiniLmEncoder, TextEncoder
from services.cache.embedding_cache import EmbeddingCache
from services.cache.encoder_process import ProcessEncoder
from services.cache.entry_store import EntryStore
from services.cache.response_cache import ResponseCache, SemanticParts
from services.cache.semantic_index import SemanticIndex
from services.cache.semantic_serving import SemanticServing
from services.cache.server import CacheServicer
from services.cache.vector_index import HnswParams
from services.cache.verifier import AcceptAll, HitVerifier, LexicalVerifier


@dataclass
class CacheApp:
    """The cache's parts, wired. `start` rebuilds the semantic index from
    Redis and starts the sweeper; `close` releases what they hold."""

    host: GrpcServiceHost
    cache: ResponseCache
    semantic: SemanticParts | None
    start: Callable[[], Awaitable[None]]
    close: Callable[[], Awaitable[None]]


def build_cache(
    settings: Settings,
    client: redis.Redis,
    *,
    encoder: TextEncoder | None = None,
    port: int | None = None,
    tracer_provider: TracerProvider | None = None,
) -> CacheApp:
    """`encoder`: an already loaded embedding model (tests share one);
    None loads the configured one when the semantic cache is enabled."""
    store = EntryStore(client)
    config = settings.cache.semantic
    semantic: SemanticParts | None = None
    embedder: BatchingEmbedder | None = None
    if config.enabled:
        # Tests pass a loaded model; main() loads the configured kind.
        encoder = encoder or MiniLmEncoder(config.model_path, threads=config.embed_threads)
        embedder = BatchingEmbedder(
            encoder, max_batch=config.max_batch, max_wait_ms=config.max_wait_ms, max_pending=config.max_pending
        )
        verifier: HitVerifier = (
            LexicalVerifier(reworded_similarity=config.reworded_similarity_threshold)
            if config.verifier == "lexical"
            else AcceptAll()
        )
        semantic = SemanticParts(
            encoder=encoder,
            verifier=verifier,
            serving=SemanticServing.from_record(config, model_id=encoder.model_id, verifier=verifier.name),
            embeddings=EmbeddingCache(
                client, embedder, model_id=encoder.model_id, dimension=encoder.dimension, ttl_s=config.embedding_ttl_s
            ),
            index=SemanticIndex(
                store,
                dimension=encoder.dimension,
                flat_max=config.flat_search_max,
                hnsw=HnswParams(
                    m=config.hnsw_m, ef_construction=config.hnsw_ef_construction, ef_search=config.hnsw_ef_search
                ),
            ),
        )
    cache = ResponseCache(store, settings.cache, semantic)
    servicer = CacheServicer(cache, reply_margin_s=settings.cache.lookup_reply_margin_ms / 1000.0)
    host = GrpcServiceHost(
        [ServiceRegistration("headrace.v1.Cache", lambda s: cache_pb2_grpc.add_CacheServicer_to_server(servicer, s))],
        host=settings.cache.host,
        port=settings.cache.port if port is None else port,
        limits=settings.limits,
        tracer_provider=tracer_provider or build_tracer_provider("headrace-cache", settings.telemetry),
        identity=service_identity(settings, Role.CACHE),
    )
    sweeper: list[asyncio.Task[None]] = []

    async def start() -> None:
        if semantic is not None:
            await semantic.index.rebuild()
            sweeper.append(asyncio.create_task(semantic.index.run_sweeper(config.sweep_interval_s), name="sweeper"))

    async def close() -> None:
        for task in sweeper:
            task.cancel()
        if embedder is not None:
            await embedder.close()

    return CacheApp(host=host, cache=cache, semantic=semantic, start=start, close=close)


async def main(settings: Settings) -> None:
    start_metrics_server(settings.cache.host, settings.cache.metrics_port)
    # Lookups under a burst share these; one past them waits (redis_pool.py).
    client = pooled_redis(settings.redis_url, max_connections=64, wait_s=2.0)
    await client.ping()
    # Off the event loop: loading the model takes seconds.
    config = settings.cache.semantic
    encoder: MiniLmEncoder | ProcessEncoder | None = None
    if config.enabled:
        if config.embedder == "process":
            encoder = await asyncio.to_thread(
                ProcessEncoder, config.model_path, threads=config.embed_threads, nice=config.embed_nice
            )
        else:
            encoder = await asyncio.to_thread(MiniLmEncoder, config.model_path, threads=config.embed_threads)
    app = build_cache(settings, client, encoder=encoder)
    # Serve only with the index rebuilt: a replica that answered before
    # would miss what its peers stored.
    await app.start()

    async def after_stop() -> None:
        await app.close()
        await client.aclose()
        if isinstance(encoder, ProcessEncoder):
            encoder.close()

    await serve(app.host, after_stop=after_stop)


if __name__ == "__main__":
    settings = load_settings()
    configure_logging("cache", settings.telemetry.log_level)
    run(main(settings))
