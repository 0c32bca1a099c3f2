"""`headrace up` waiting for workers to register: a scheduler that does not
answer ends in a clear MeshError, never a raw gRPC traceback."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from headrace.local.mesh import LocalMesh, MeshError, ServiceProcess
from headrace.runtime.config import Settings


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _plan(tmp_path: Path, scheduler_pid: int) -> list[ServiceProcess]:
    log = tmp_path / "scheduler.log"
    log.write_text("boom: the scheduler's last words\n")
    address = f"127.0.0.1:{_closed_port()}"
    return [
        ServiceProcess(
            "scheduler", "services.scheduler", [], address, "headrace.v1.Scheduler", str(log), scheduler_pid
        ),
        ServiceProcess("worker-a-0", "services.worker", [], "127.0.0.1:1", "headrace.v1.Worker", str(log)),
    ]


def test_a_scheduler_that_exited_is_reported_with_its_log(tmp_path: Path) -> None:
    mesh = LocalMesh(Settings(state_dir=tmp_path))
    with pytest.raises(MeshError, match="scheduler exited") as caught:
        mesh._wait_workers_registered(_plan(tmp_path, scheduler_pid=0), time.monotonic() + 30)
    assert "last words" in str(caught.value)


def test_a_scheduler_that_does_not_answer_yet_is_asked_again_until_the_deadline(tmp_path: Path) -> None:
    mesh = LocalMesh(Settings(state_dir=tmp_path))
    with pytest.raises(MeshError, match="did not register"):
        mesh._wait_workers_registered(_plan(tmp_path, scheduler_pid=os.getpid()), time.monotonic() + 0.5)


def test_scheduler_replicas_are_planned_on_consecutive_ports_and_each_is_listed(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, scheduler={"port": 51000, "replicas": 3})  # type: ignore[arg-type]
    mesh = LocalMesh(settings, echo=lambda _line: None)
    schedulers = [p for p in mesh.plan() if p.module == "services.scheduler"]
    assert [(p.name, p.address, p.args) for p in schedulers] == [
        (f"scheduler-{i}", f"127.0.0.1:{51000 + i}", ["--replica", str(i)]) for i in range(3)
    ]
    # Nothing runs: `status` lists every replica, each DOWN.
    listed = {row.name: row.state for row in mesh.status() if row.name.startswith("scheduler")}
    assert listed == {f"scheduler-{i}": "DOWN" for i in range(3)}
    # One replica keeps the plain name.
    single = LocalMesh(Settings(state_dir=tmp_path), echo=lambda _line: None)
    assert [p.name for p in single.plan() if p.module == "services.scheduler"] == ["scheduler"]


def test_each_autoscaled_pool_keeps_ports_for_its_most_workers(tmp_path: Path) -> None:
    settings = Settings(
        state_dir=str(tmp_path),
        pools={
            "a": {"workers": 1, "engine": {"kind": "synthetic"}},
            "b": {"workers": 2, "engine": {"kind": "synthetic"}},
            "c": {"workers": 1, "engine": {"kind": "synthetic"}},
        },
        models={name: {"default_version": "1", "versions": {"1": {"pool": name}}} for name in "abc"},
        default_model="a",
        scheduler={"pools": {"a": {"autoscale": {"enabled": True, "min_workers": 1, "max_workers": 3}}}},
        worker={"base_port": 50061},
    )  # type: ignore[arg-type]
    mesh = LocalMesh(settings)
    # a may grow to 3 (50061-50063), b has its 2 (50064-50065), then c.
    assert [mesh.worker_port("a", i) for i in range(3)] == [50061, 50062, 50063]
    assert [mesh.worker_port("b", i) for i in range(2)] == [50064, 50065]
    assert mesh.worker_port("c", 0) == 50066
    names = [p.name for p in mesh.plan()]
    # Each pool starts with its configured count; a's others come when the autoscaler asks.
    assert [n for n in names if n.startswith("worker-")] == ["worker-a-0", "worker-b-0", "worker-b-1", "worker-c-0"]
