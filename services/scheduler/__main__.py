"""python -m services.scheduler: the Scheduler service."""

from __future__ import annotations

from opentelemetry.sdk.trace import TracerProvider

from headrace.runtime.aio import run
from headrace.runtime.config import Settings, load_settings
from headrace.runtime.server import GrpcServiceHost, ServiceRegistration, serve
from headrace.runtime.service_certs import Role
from headrace.runtime.service_identity import service_identity
from headrace.runtime.telemetry import build_tracer_provider, configure_logging, start_metrics_server
from headrace.v1 import scheduler_pb2_grpc
from services.scheduler.batch_server import BatchRpcs
from services.scheduler.batch_wiring import build_batch_service
from services.scheduler.dispatcher import Dispatcher, PoolDirectory
from services.scheduler.leases import LeaseTable
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


def build_dispatcher(settings: Settings) -> Dispatcher:
    return Dispatcher(
        registry=WorkerRoster(stale_after_s=settings.scheduler.worker_stale_after_s),
        leases=LeaseTable(ttl_s=settings.scheduler.lease_ttl_s),
        pools=PoolDirectory.from_settings(settings),
        orphan_grace_s=settings.scheduler.worker_stale_after_s,
    )


async def main(settings: Settings) -> None:
    start_metrics_server(settings.scheduler.host, settings.scheduler.metrics_port)
    dispatcher = build_dispatcher(settings)
    await dispatcher.start()
    tracer_provider = build_tracer_provider("headrace-scheduler", settings.telemetry)
    batch = build_batch_service(settings, tracer_provider)
    await batch.start()

    async def close() -> None:
        await dispatcher.close()
        await batch.close()

    await serve(build_host(settings, dispatcher, tracer_provider=tracer_provider, batches=batch.rpcs), after_stop=close)


if __name__ == "__main__":
    settings = load_settings()
    configure_logging("scheduler", settings.telemetry.log_level)
    run(main(settings))
