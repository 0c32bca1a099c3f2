"""The gateway's and the rate limits' settings."""

from __future__ import annotations

import pytest

from headrace.runtime.config import RateLimitSettings, Settings, hash_api_key


def test_the_gateway_is_on_by_default_on_loopback_and_owns_the_router_metrics() -> None:
    settings = Settings()
    assert settings.gateway.enabled and (settings.router.host, settings.router.http_port) == ("127.0.0.1", 8000)
    # Served on the gateway's /metrics; a separate listener only when asked.
    assert settings.router.metrics_port is None
    assert Settings(router={"metrics_port": 60051}).router.metrics_port == 60051


def test_default_metrics_ports_lie_above_the_kernels_ephemeral_range() -> None:
    # A port in Linux's default ephemeral range (32768-60999) can be the local
    # port of a client connection when its server starts, which then fails
    # with "Address already in use" (seen in CI on the old 6005x defaults).
    settings = Settings()
    offset = settings.worker.metrics_port_offset
    assert offset is not None
    worker_metrics = settings.worker.base_port + offset
    ports = [settings.cache.metrics_port, settings.scheduler.metrics_port, worker_metrics, worker_metrics + 1000]
    assert all(port is not None and 60999 < port < 65536 for port in ports), ports


def test_open_dev_mode_keeps_the_http_gateway_on_loopback_too() -> None:
    # The gateway binds router.host: the loopback rule covers HTTP as well.
    with pytest.raises(ValueError, match="refusing to bind '0.0.0.0'"):
        Settings(router={"host": "0.0.0.0", "http_port": 8080})


def test_a_tenant_without_limits_gets_the_top_level_ones() -> None:
    settings = Settings(
        rate_limits={"requests_per_minute": 100},
        tenants={
            "acme": {"api_key_sha256": [hash_api_key("a")], "rate_limits": {"tokens_per_day": 5000}},
            "globex": {"api_key_sha256": [hash_api_key("g")]},
        },
    )
    assert settings.tenant_rate_limits("acme") == RateLimitSettings(tokens_per_day=5000)
    assert settings.tenant_rate_limits("globex").requests_per_minute == 100
    assert settings.tenant_rate_limits("default").requests_per_minute == 100
    assert Settings().tenant_rate_limits("default").unlimited


@pytest.mark.parametrize(
    "overrides",
    [
        {"rate_limits": {"requests_per_minute": 0}},
        {"rate_limits": {"burst": 3}},
        {"gateway": {"stall_timeout_s": 0}},
        {"gateway": {"max_body_bytes": 10}},
    ],
)
def test_bad_values_are_refused(overrides: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Settings(**overrides)  # type: ignore[arg-type]
