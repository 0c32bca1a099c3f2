"""A client that runs inside a test's network namespace (`ip netns exec NS
python -m tests.support.netns_client ...`) and prints what it saw as one
JSON line: the test's own namespace cannot reach the addresses in there.

    workers --scheduler ADDR --accepting E1,E2 [--timeout S] [--certs DIR]
        wait until exactly these endpoints are accepting; print the listing
        (--certs: the deployment's certificates; asks as the admin role)
    generate --router ADDR --key KEY --count N
        send N requests; print the worker of each answer and any errors
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from pathlib import Path

import grpc
import grpc.aio

from headrace.runtime.channels import dial
from headrace.runtime.service_certs import Role
from headrace.runtime.service_identity import load_identity
from headrace.v1 import generation_pb2, router_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc


async def workers(scheduler: str, accepting: set[str], timeout_s: float, certs: str | None) -> dict[str, object]:
    deadline = time.monotonic() + timeout_s
    listing: list[dict[str, object]] = []
    identity = load_identity(Path(certs), Role.ADMIN) if certs else None
    async with dial(scheduler, [], identity, server=Role.SCHEDULER) as channel:
        stub = scheduler_pb2_grpc.SchedulerStub(channel)
        while True:
            try:
                response = await stub.ListWorkers(scheduler_pb2.ListWorkersRequest(), timeout=2.0)
                listing = [
                    {"worker_id": w.info.worker_id, "endpoint": w.info.endpoint, "accepting": w.accepting}
                    for w in response.workers
                ]
                if {str(w["endpoint"]) for w in listing if w["accepting"]} == accepting:
                    return {"ok": True, "workers": listing}
            except grpc.aio.AioRpcError as exc:
                listing = [{"error": exc.code().name}]
            if time.monotonic() > deadline:
                return {"ok": False, "workers": listing}
            await asyncio.sleep(0.1)


async def generate(router: str, key: str, count: int) -> dict[str, object]:
    served: Counter[str] = Counter()
    errors: list[str] = []
    async with grpc.aio.insecure_channel(router) as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        for n in range(count):
            request = generation_pb2.GenerateRequest(
                prompt=f"request {n}", sampling=generation_pb2.SamplingParams(max_tokens=4)
            )
            try:
                response = await stub.Generate(request, metadata=(("authorization", f"Bearer {key}"),), timeout=20.0)
            except grpc.aio.AioRpcError as exc:
                errors.append(f"{exc.code().name}: {exc.details()}")
                continue
            served[response.route.worker_id] += 1
    return {"served": dict(served), "errors": errors}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.support.netns_client")
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("workers")
    listing.add_argument("--scheduler", required=True)
    listing.add_argument("--accepting", required=True)
    listing.add_argument("--timeout", type=float, default=60.0)
    listing.add_argument("--certs", default=None)
    sending = commands.add_parser("generate")
    sending.add_argument("--router", required=True)
    sending.add_argument("--key", required=True)
    sending.add_argument("--count", type=int, default=8)
    args = parser.parse_args()
    if args.command == "workers":
        accepting = set(filter(None, args.accepting.split(",")))
        result = asyncio.run(workers(args.scheduler, accepting, args.timeout, args.certs))
    else:
        result = asyncio.run(generate(args.router, args.key, args.count))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
