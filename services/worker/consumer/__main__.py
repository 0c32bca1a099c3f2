"""python -m services.worker.consumer --pool NAME [--index N] --worker HOST:PORT [--worker-id ID]

The batch consumer beside worker N of a pool: consumes the pool's batch
queue and runs each chunk's rows on that worker. SIGTERM: chunks running
finish, then it stops (a chunk cut short by SIGKILL is redelivered)."""

from __future__ import annotations

import argparse
import logging

from headrace.runtime.config import load_settings
from headrace.runtime.telemetry import configure_logging, start_metrics_server
from services.worker.consumer.wiring import BatchConsumer

log = logging.getLogger("services.worker.consumer")


def cli() -> None:
    parser = argparse.ArgumentParser(prog="python -m services.worker.consumer")
    parser.add_argument("--pool", required=True)
    parser.add_argument("--index", type=int, default=0, help="the worker's number within the pool")
    parser.add_argument("--worker", required=True, help="host:port of the worker's gRPC server")
    parser.add_argument("--worker-id", default=None, help="the worker's id at the scheduler (default: POOL-INDEX)")
    parser.add_argument("--metrics-port", type=int, default=None, help="serve /metrics here (default: off)")
    args = parser.parse_args()
    settings = load_settings()
    configure_logging(f"batch[{args.pool}-{args.index}]", settings.telemetry.log_level)
    start_metrics_server(settings.worker.host, args.metrics_port)
    consumer = BatchConsumer(
        settings, pool=args.pool, index=args.index, worker_address=args.worker, worker_id=args.worker_id
    )
    log.info("consuming pool %s's batch queue for the worker at %s", args.pool, args.worker)
    try:
        consumer.worker(loglevel=settings.telemetry.log_level).start()
    finally:
        consumer.close()


if __name__ == "__main__":
    cli()
