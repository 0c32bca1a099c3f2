"""Actuators make the scheduler's worker-count decision real
(docs/autoscaling.md). One small interface; this module has the local one,
which `headrace up`'s supervisor runs: worker processes (and the batch
consumer beside each) started and stopped on this machine. Kubernetes
needs no code of ours (KEDA's Prometheus trigger on the same number);
compose is `docker compose up --scale`.

Scaling down retires the newest worker of the pool: its consumer is stopped
first (no new batch rows; Celery's acks_late puts back what it had not
finished), then the worker, which drains: it reports `draining` so the
scheduler places nothing new there, and finishes what it runs within
worker.drain_timeout_s. Until it exits it still counts as a worker of the
pool, so a scale-down is not repeated while one drains.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from headrace.local.mesh import LocalMesh, ServiceProcess, is_running
from headrace.runtime.channels import open_sync_channel
from headrace.runtime.service_certs import Role
from headrace.runtime.service_identity import ServiceIdentity
from headrace.v1 import scheduler_pb2, scheduler_pb2_grpc

log = logging.getLogger("headrace.local.actuator")


class Actuator(Protocol):
    def workers(self, pool: str) -> int:
        """Workers of the pool now, starting and draining ones included."""
        ...

    def scale_to(self, pool: str, count: int) -> None:
        """Start or retire workers until the pool has `count`."""
        ...


class Watcher(Protocol):
    """What the actuator needs of the supervisor."""

    def add(self, process: ServiceProcess) -> None: ...

    def forget(self, process: ServiceProcess) -> None: ...


@dataclass
class _Retiring:
    processes: list[ServiceProcess]
    since: float


@dataclass
class LocalActuator:
    mesh: LocalMesh
    watcher: Watcher
    env: dict[str, str]
    # Worker and consumer processes by pool, in index order.
    running: dict[str, list[list[ServiceProcess]]] = field(default_factory=dict)
    retiring: dict[str, list[_Retiring]] = field(default_factory=dict)
    clock: Callable[[], float] = time.monotonic

    @classmethod
    def over(
        cls, mesh: LocalMesh, watcher: Watcher, processes: list[ServiceProcess], env: dict[str, str]
    ) -> LocalActuator:
        """The actuator for the processes `up` started."""
        actuator = cls(mesh, watcher, env)
        by_name = {p.name: p for p in processes}
        for pool in mesh.settings.pools:
            pairs = []
            for index in range(mesh.max_workers(pool)):
                planned = mesh.worker_processes(pool, index)
                if all(p.name in by_name for p in planned):
                    pairs.append([by_name[p.name] for p in planned])
            actuator.running[pool] = pairs
        return actuator

    def workers(self, pool: str) -> int:
        self._reap(pool)
        return len(self.running.get(pool, [])) + len(self.retiring.get(pool, []))

    def scale_to(self, pool: str, count: int) -> None:
        count = max(0, min(count, self.mesh.max_workers(pool)))
        current = self.running.setdefault(pool, [])
        draining = {r.processes[0].name for r in self.retiring.get(pool, [])}
        while len(current) + len(draining) < count and len(current) < self.mesh.max_workers(pool):
            index = len(current)
            if self.mesh.worker_processes(pool, index)[0].name in draining:
                # Its port is still held by the worker draining there: next round.
                break
            processes = self.mesh.worker_processes(pool, index)
            for process in processes:
                self.mesh.spawn(process, self.env)
                self.watcher.add(process)
            current.append(processes)
            log.info("pool %s: started worker %d (now %d)", pool, index, len(current))
        while len(current) > count:
            processes = current.pop()
            # The consumer first (it takes batch rows to the worker), then the worker.
            for process in reversed(processes):
                self.watcher.forget(process)
                self.mesh.retire(process)
            self.retiring.setdefault(pool, []).append(_Retiring(processes, self.clock()))
            log.info("pool %s: retiring %s (now %d)", pool, processes[0].name, len(current))

    def _reap(self, pool: str) -> None:
        """Retired workers that have exited stop counting."""
        still = [r for r in self.retiring.get(pool, []) if any(is_running(p) for p in r.processes)]
        self.retiring[pool] = still


def fetch_decisions(
    scheduler_address: str, identity: ServiceIdentity | None = None, timeout_s: float = 2.0
) -> dict[str, int]:
    """Each pool's desired worker count, as the scheduler decided it
    (`identity`: the admin certificate, when the mesh has API keys)."""
    with open_sync_channel(scheduler_address, identity, server=Role.SCHEDULER) as channel:
        response = scheduler_pb2_grpc.SchedulerStub(channel).GetPoolStatus(
            scheduler_pb2.GetPoolStatusRequest(), timeout=timeout_s
        )
    return {pool.pool: pool.desired_workers for pool in response.pools}


def follow(actuator: Actuator, decisions: Mapping[str, int], pools: list[str]) -> None:
    """Scale each autoscaled pool to its decision."""
    for pool in pools:
        desired = decisions.get(pool)
        if desired is not None and desired != actuator.workers(pool):
            actuator.scale_to(pool, desired)
