"""python -m services.scheduler [--replica N]: the Scheduler service (replica
N of scheduler.replicas, on the port scheduler.addresses or scheduler.port
+ N gives it)."""

from __future__ import annotations

import argparse

import redis.asyncio as aioredis
from opentelemetry.sdk.trace import TracerProvider

from headrace.runtime.aio import run
from headrace.runtime.config import Settings, load_settings
from headrace.runtime.redis_pool import pooled_redis
from headrace.runtime.server import GrpcServiceHost, ServiceRegistration, serve
from headrace.runtime.service_certs import Role
from headrace.runtime.service_identity import service_identity
from headrace.runtime.telemetry import build_tracer_provider, configure_logging, start_metrics_server
from headrace.v1 import scheduler_pb2_grpc
from services.scheduler.batch_server import BatchRpcs
from services.scheduler.batch_wiring import build_batch_service
from services.scheduler.dispatcher import Dispatcher, PoolDirectory
from services.scheduler.leases import LeaseTable
from services.scheduler.replica_set import ReplicaSet, SlotShare
from services.scheduler.server import SchedulerServicer
from services.scheduler.worker_roster import WorkerRoster


def build_host(
    settings: Settings,
    dispatcher: Dispatcher,
    *,
    port: int | None = None,
    tracer_provider: TracerProvider | None = None,
    batches: BatchRpcs | None = None,
) -> GrpcServiceHost:
    servicer = SchedulerServicer(dispatcher, settings.scheduler, batches=batches)
    return GrpcServiceHost(
        [
            ServiceRegistration(
                "headrace.v1.Scheduler", lambda s: scheduler_pb2_grpc.add_SchedulerServicer_to_server(servicer, s)
            )
        ],
        host=settings.scheduler.host,
        port=settings.scheduler.port if port is None else port,
        limits=settings.limits,
        tracer_provider=tracer_provider or build_tracer_provider("headrace-scheduler", settings.telemetry),
        identity=service_identity(settings, Role.SCHEDULER),
    )


def build_dispatcher(settings: Settings, *, share: SlotShare | None = None) -> Dispatcher:
    return Dispatcher(
        registry=WorkerRoster(stale_after_s=settings.scheduler.worker_stale_after_s, share=share),
        leases=LeaseTable(ttl_s=settings.scheduler.lease_ttl_s),
        pools=PoolDirectory.from_settings(settings),
        orphan_grace_s=settings.scheduler.worker_stale_after_s,
    )


def replica_port(settings: Settings, replica: int) -> int:
    target = settings.scheduler.targets()[replica]
    return int(target.rsplit(":", 1)[1])


async def main(settings: Settings, replica: int = 0) -> None:
    targets = settings.scheduler.targets()
    port = replica_port(settings, replica)
    metrics_port = settings.scheduler.metrics_port
    # The metrics port moves with the gRPC port: replicas on one host (headrace
    # up: 50053, 50054, ...) get 61053, 61054, ...; replicas on hosts of their
    # own (Kubernetes: every pod on 50053) all serve 61053.
    shift = port - settings.scheduler.port
    start_metrics_server(settings.scheduler.host, None if metrics_port is None else metrics_port + shift)
    replicas: ReplicaSet | None = None
    redis: aioredis.Redis | None = None
    dispatcher: Dispatcher | None = None
    if len(targets) > 1:
        # Several replicas: this one leases only its share of each worker.
        redis = pooled_redis(
            settings.redis_url,
            max_connections=8,
            wait_s=settings.scheduler.replica_ttl_s,
            socket_timeout=settings.scheduler.replica_ttl_s,
            socket_connect_timeout=1.0,
        )
        replicas = ReplicaSet(
            redis,
            replica_id=targets[replica],
            ttl_s=settings.scheduler.replica_ttl_s,
            expected=targets,
            on_change=lambda: dispatcher.kick() if dispatcher is not None else None,
        )
    dispatcher = build_dispatcher(settings, share=replicas)
    await dispatcher.start()
    if replicas is not None:
        await replicas.start()
    tracer_provider = build_tracer_provider("headrace-scheduler", settings.telemetry)
    batch = build_batch_service(settings, tracer_provider, choose_pool=dispatcher.batch_pool)
    await batch.start()

    async def close() -> None:
        if replicas is not None:
            await replicas.close()
        if redis is not None:
            await redis.aclose()
        await dispatcher.close()
        await batch.close()

    await serve(
        build_host(settings, dispatcher, port=port, tracer_provider=tracer_provider, batches=batch.rpcs),
        after_stop=close,
    )


def cli() -> None:
    parser = argparse.ArgumentParser(prog="python -m services.scheduler")
    parser.add_argument("--replica", type=int, default=0, help="replica number, 0 to scheduler.replicas - 1")
    args = parser.parse_args()
    settings = load_settings()
    replicas = len(settings.scheduler.targets())
    if not 0 <= args.replica < replicas:
        raise SystemExit(
            f"--replica {args.replica}: the config has {replicas} scheduler replica(s), 0 to {replicas - 1}"
        )
    configure_logging("scheduler" if replicas == 1 else f"scheduler[{args.replica}]", settings.telemetry.log_level)
    run(main(settings, args.replica))


if __name__ == "__main__":
    cli()
