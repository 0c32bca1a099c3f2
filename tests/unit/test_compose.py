"""The compose file keeps the house rules: every Headrace service shares one
network namespace (loopback only inside), and the host sees published
ports on 127.0.0.1 only."""

from pathlib import Path

import yaml

COMPOSE = Path(__file__).parents[2] / "compose" / "docker-compose.yml"


def test_services_share_one_loopback_and_publish_on_localhost_only() -> None:
    spec = yaml.safe_load(COMPOSE.read_text())
    services = spec["services"]
    anchor = "redis"
    for name, service in services.items():
        if name != anchor:
            assert service.get("network_mode") == f"service:{anchor}", name
            assert "ports" not in service, f"{name} publishes ports outside the shared namespace"
    for mapping in services[anchor]["ports"]:
        assert mapping.startswith("127.0.0.1:"), mapping


def test_every_mesh_service_runs_and_is_health_checked() -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    commands = {name: " ".join(s["command"]) for name, s in services.items() if "command" in s}
    for module in ("services.cache", "services.scheduler", "services.worker", "services.router"):
        # The module itself, not one inside it (services.worker.consumer).
        names = [n for n, c in commands.items() if f" {module} " in f" {c} "]
        assert names, module
        for name in names:
            assert "headrace" in " ".join(services[name]["healthcheck"]["test"])
