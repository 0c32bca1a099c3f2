"""Workers on other hosts, for real: three network namespaces on one bridge
with private 10.x addresses (made and removed by the test). The router,
two scheduler replicas and Redis run in "core"; one worker each in "a" and "b",
bound to every interface of their namespace and registered by the
address they advertise. Traffic reaches both; when a's link goes down, its
worker goes stale and the traffic moves to b's, with nothing lost.

Beyond loopback the mesh needs API keys (the router's door) and service
identity (mutual TLS between the services, with certificates that name
the worker hosts): the test makes both. Every process, and the client,
runs inside a namespace the test created: no traffic goes anywhere else."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from headrace.local.redis_server import redis_server_argv, redis_server_binary
from headrace.runtime.config import hash_api_key
from headrace.runtime.service_certs import init_deployment
from tests.support.netns import Host, Processes, bridged_hosts, netns_unavailable

pytestmark = pytest.mark.slow

WHY_NOT = netns_unavailable()
API_KEY = "netns-test-key"
REDIS_PORT = 6390
SCHEDULER_PORT = 50053
ROUTER_PORT = 50051
WORKER_PORT = 50061


def config(core: Host, certs: Path) -> dict[str, object]:
    return {
        "redis_url": f"redis://127.0.0.1:{REDIS_PORT}/0",
        # Serving beyond loopback takes API keys (open dev mode refuses).
        "tenants": {"netns": {"api_key_sha256": [hash_api_key(API_KEY)]}},
        # ... and calls between services on different hosts go over mutual
        # TLS with the deployment's certificates.
        "internal_tls": {"certs_dir": str(certs)},
        "pools": {"gen": {"workers": 2, "engine": {"kind": "synthetic", "ttft_ms": 1, "max_concurrency": 4}}},
        "models": {"gen": {"default_version": "1", "versions": {"1": {"pool": "gen"}}}},
        "default_model": "gen",
        "default_embedding_model": "",
        "router": {"port": ROUTER_PORT, "metrics_port": None},
        "gateway": {"enabled": False},
        "cache": {"enabled": False, "metrics_port": None},
        "scheduler": {
            # Bound on every interface of core; everyone dials it by its bridge address.
            "host": "0.0.0.0",
            "addresses": [f"{core.address}:{SCHEDULER_PORT}", f"{core.address}:{SCHEDULER_PORT + 1}"],
            "metrics_port": None,
            "report_interval_ms": 200,
            "worker_stale_after_s": 1.5,
            # Each replica takes the workers in turn: both hosts get traffic
            # (least-load ties on idle workers always pick the same one).
            "pools": {"gen": {"policy": "round_robin"}},
        },
        "worker": {"host": "0.0.0.0", "metrics_port_offset": None},
    }


def client(core: Host, *args: str) -> dict[str, object]:
    result = subprocess.run(
        ["ip", "netns", "exec", core.netns, sys.executable, "-m", "tests.support.netns_client", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
    )
    assert result.returncode == 0, result.stderr
    parsed: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return parsed


@pytest.fixture
def hosts() -> Iterator[dict[str, Host]]:
    if WHY_NOT is not None:
        pytest.skip(WHY_NOT)
    with bridged_hosts(["core", "a", "b"]) as made:
        yield made


def test_workers_on_two_other_hosts_serve_and_a_cut_host_goes_stale(hosts: dict[str, Host], tmp_path: Path) -> None:
    core, host_a, host_b = hosts["core"], hosts["a"], hosts["b"]
    config_path = tmp_path / "headrace.yaml"
    certs = tmp_path / "certs"
    # The worker certificate names the addresses workers may announce.
    init_deployment(certs, worker_hosts=[host_a.address, host_b.address])
    config_path.write_text(yaml.safe_dump(config(core, certs)))
    env = {**os.environ, "HEADRACE_CONFIG": str(config_path), "HEADRACE_STATE_DIR": str(tmp_path / "state")}
    logs = tmp_path / "logs"
    processes = Processes()
    binary = redis_server_binary()
    assert binary is not None, "redis-server is installed wherever the integration tests run"
    try:
        processes.spawn(
            core,
            redis_server_argv(binary, port=REDIS_PORT, data_dir=tmp_path, appendonly=False),
            env=env,
            log_path=logs / "redis.log",
        )
        for replica in range(2):
            processes.spawn(
                core,
                [sys.executable, "-m", "services.scheduler", "--replica", str(replica)],
                env=env,
                log_path=logs / f"scheduler-{replica}.log",
            )
        processes.spawn(core, [sys.executable, "-m", "services.router"], env=env, log_path=logs / "router.log")
        for index, host in enumerate((host_a, host_b)):
            # Bound to every interface of its host; it registers by the address it advertises.
            worker_env = {**env, "HEADRACE_WORKER__ADVERTISE_HOST": host.address}
            processes.spawn(
                host,
                # The same port on each host: they are different hosts.
                [
                    sys.executable,
                    "-m",
                    "services.worker",
                    "--pool",
                    "gen",
                    "--index",
                    str(index),
                    "--port",
                    str(WORKER_PORT),
                ],
                env=worker_env,
                log_path=logs / f"worker-{index}.log",
            )
        schedulers = [f"{core.address}:{SCHEDULER_PORT + replica}" for replica in range(2)]
        both = f"{host_a.address}:{WORKER_PORT},{host_b.address}:{WORKER_PORT}"
        for scheduler in schedulers:
            # Each worker reports to every replica, by its advertised address.
            registered = client(core, "workers", "--scheduler", scheduler, "--accepting", both, "--certs", str(certs))
            assert registered["ok"], (registered, _logs(logs))

        served = client(core, "generate", "--router", f"127.0.0.1:{ROUTER_PORT}", "--key", API_KEY, "--count", "12")
        assert served["errors"] == [], (served, _logs(logs))
        assert served["served"].keys() == {"gen-0", "gen-1"}  # type: ignore[attr-defined]

        # Host a is cut off: no RST, its reports just stop arriving.
        host_a.link_down()
        only_b = f"{host_b.address}:{WORKER_PORT}"
        for scheduler in schedulers:
            stale = client(core, "workers", "--scheduler", scheduler, "--accepting", only_b, "--certs", str(certs))
            assert stale["ok"], (stale, _logs(logs))
        moved = client(core, "generate", "--router", f"127.0.0.1:{ROUTER_PORT}", "--key", API_KEY, "--count", "8")
        assert moved == {"served": {"gen-1": 8}, "errors": []}, (moved, _logs(logs))
    finally:
        processes.stop_all()


def _logs(logs: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}" for p in sorted(logs.glob("*.log")))
