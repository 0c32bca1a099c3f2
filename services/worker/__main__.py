"""python -m services.worker --pool NAME [--index N] [--port P]

Loads the pool's engine, serves the Worker API, and reports load to the
scheduler until SIGTERM; then drains and shuts the engine down."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass

from opentelemetry.sdk.trace import TracerProvider

from headrace.runtime.aio import run
from headrace.runtime.config import Settings, load_settings
from headrace.runtime.server import GrpcServiceHost, ServiceRegistration, serve
from headrace.runtime.service_certs import Role
from headrace.runtime.service_identity import service_identity
from headrace.runtime.telemetry import build_tracer_provider, configure_logging, start_metrics_server
from headrace.v1 import scheduler_pb2, worker_pb2_grpc
from services.worker.engines import build_engine
from services.worker.engines.base import Engine
from services.worker.load_reporter import LoadReporter
from services.worker.server import WorkerServicer

log = logging.getLogger("services.worker")


@dataclass
class WorkerApp:
    host: GrpcServiceHost
    reporter: LoadReporter
    engine: Engine
    # The host others dial (worker.advertise_host, else the bind host).
    advertise_host: str | None = None

    @property
    def endpoint(self) -> str:
        """Where routers reach this worker: the address it registers by."""
        return f"{self.advertise_host or self.host.bound_host}:{self.host.port}"

    async def close(self) -> None:
        await self.reporter.stop()
        await self.engine.close()


def build_worker(
    settings: Settings,
    *,
    pool: str,
    index: int,
    port: int,
    scheduler_targets: list[str] | None = None,
    tracer_provider: TracerProvider | None = None,
) -> WorkerApp:
    if pool not in settings.pools:
        raise SystemExit(f"unknown pool {pool!r}; configured: {', '.join(sorted(settings.pools))}")
    try:
        reachable = settings.worker.reachable_host()
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc
    model_versions = settings.pool_models(pool)
    engine = build_engine(settings.pool_engine(pool), models_dir=settings.models_dir)
    worker_id = f"{pool}-{index}"
    tracer_provider = tracer_provider or build_tracer_provider(f"headrace-worker-{worker_id}", settings.telemetry)
    servicer = WorkerServicer(
        engine,
        model_versions=model_versions,
        limits=settings.limits,
        tracer=tracer_provider.get_tracer("headrace.worker"),
        prefill_token_weight=settings.pools[pool].prefill_token_weight,
        preempt_batch=settings.scheduler.for_pool(pool).online_preempts_batch,
        batch_share_while_online=settings.scheduler.for_pool(pool).batch_share_while_online,
    )
    identity = service_identity(settings, Role.WORKER)
    host = GrpcServiceHost(
        [
            ServiceRegistration(
                "headrace.v1.Worker", lambda s: worker_pb2_grpc.add_WorkerServicer_to_server(servicer, s)
            )
        ],
        host=settings.worker.host,
        port=port,
        limits=settings.limits,
        tracer_provider=tracer_provider,
        identity=identity,
    )
    reporter = LoadReporter(
        # Every replica: each admits on its own, from these reports.
        scheduler_targets=scheduler_targets or settings.scheduler.targets(),
        worker=scheduler_pb2.WorkerInfo(worker_id=worker_id, pool=pool, models=model_versions, engine=engine.kind),
        engine=engine,
        limits=settings.limits,
        identity=identity,
        interval_s=settings.scheduler.report_interval_ms / 1000.0,
    )
    return WorkerApp(host=host, reporter=reporter, engine=engine, advertise_host=reachable)


async def start_worker(app: WorkerApp) -> int:
    """Load the engine, serve, and start reporting (the endpoint is known
    only once the port is bound)."""
    await app.engine.start()
    port = await app.host.start()
    app.reporter.set_endpoint(app.endpoint)
    await app.reporter.start()
    return port


async def main(settings: Settings, pool: str, index: int, port: int | None) -> None:
    port = port if port is not None else settings.worker.base_port + index
    if settings.worker.metrics_port_offset is not None:
        start_metrics_server(settings.worker.host, port + settings.worker.metrics_port_offset)
    app = build_worker(settings, pool=pool, index=index, port=port)
    log.info("starting %s engine for pool %s", app.engine.kind, pool)
    await app.engine.start()
    await serve(
        app.host,
        grace_s=settings.worker.drain_timeout_s,
        after_start=lambda: _report(app),
        before_stop=app.reporter.drain,
        after_stop=app.close,
    )


async def _report(app: WorkerApp) -> None:
    app.reporter.set_endpoint(app.endpoint)
    await app.reporter.start()


def cli() -> None:
    parser = argparse.ArgumentParser(prog="python -m services.worker")
    parser.add_argument("--pool", required=True)
    parser.add_argument("--index", type=int, default=0, help="worker number within the pool")
    parser.add_argument("--port", type=int, default=None, help="default: worker.base_port + index")
    args = parser.parse_args()
    settings = load_settings()
    configure_logging(f"worker[{args.pool}-{args.index}]", settings.telemetry.log_level)
    run(main(settings, args.pool, args.index, args.port))


if __name__ == "__main__":
    # Guarded: engines such as vLLM spawn processes that re-import __main__.
    cli()
