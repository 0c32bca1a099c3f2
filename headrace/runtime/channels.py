"""Client channels for calls between services, and what every such call
carries: the request id, tenant and W3C trace context of the request being
served, and a timeout no later than its deadline.

Calls pass these explicitly (`**call_options()`) rather than through
grpc.aio client interceptors: an intercepted streaming call relays every
message through an extra layer, and the router relays every token."""

from __future__ import annotations

import ipaddress
import json
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
from opentelemetry import propagate

from headrace.runtime.config import LimitSettings
from headrace.runtime.request_context import REQUEST_ID_KEY, TENANT_KEY, deadline_var, request_id_var, tenant_var
from headrace.runtime.service_certs import Role, server_name
from headrace.runtime.service_identity import ServiceIdentity


@dataclass(frozen=True)
class KeepalivePolicy:
    """Keepalive, both ends of it, in one place: what a client sends and
    what a server accepts must agree. A server left at gRPC's defaults
    (pings at most every 5 minutes, none without calls) counts a client's
    10 s pings as strikes and, at the third, closes the connection with
    GOAWAY `too_many_pings`, failing the calls on it."""

    # Each side pings a connection this often, idle or not: a dead peer
    # (a host gone, a cable pulled) is noticed within seconds.
    ping_interval_ms: int = 10_000
    # And gives up on it when the ping is not answered in this time.
    ping_timeout_ms: int = 5_000

    def client_options(self) -> list[tuple[str, Any]]:
        return [
            ("grpc.keepalive_time_ms", self.ping_interval_ms),
            ("grpc.keepalive_timeout_ms", self.ping_timeout_ms),
            ("grpc.keepalive_permit_without_calls", 1),
            # Keep pinging a connection that carries no data (an idle channel).
            ("grpc.http2.max_pings_without_data", 0),
        ]

    def server_options(self) -> list[tuple[str, Any]]:
        """The client options (a server pings its clients too) and the
        policy that accepts the clients' pings: half their interval is the
        least a server allows, so a ping a little early (timers drift, a
        busy loop) is no strike; without calls too."""
        accepted = self.ping_interval_ms // 2
        return [
            *self.client_options(),
            # GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS in gRPC core
            # (the only spelling it reads; default 5 minutes).
            ("grpc.http2.min_ping_interval_without_data_ms", accepted),
        ]


KEEPALIVE = KeepalivePolicy()


def _bounded(limits: LimitSettings) -> list[tuple[str, Any]]:
    # Message sizes are bounded, never unlimited.
    return [
        ("grpc.max_send_message_length", limits.max_message_bytes),
        ("grpc.max_receive_message_length", limits.max_message_bytes),
    ]


def channel_options(limits: LimitSettings, keepalive: KeepalivePolicy = KEEPALIVE) -> list[tuple[str, Any]]:
    """Options of every channel between services."""
    return [*_bounded(limits), *keepalive.client_options()]


def server_options(limits: LimitSettings, keepalive: KeepalivePolicy = KEEPALIVE) -> list[tuple[str, Any]]:
    """Options of every Headrace gRPC server: bounded, and a keepalive
    policy that accepts what the clients of channel_options send."""
    return [
        *_bounded(limits),
        *keepalive.server_options(),
        # No SO_REUSEPORT: a second server on a taken port must fail, not
        # silently share it.
        ("grpc.so_reuseport", 0),
    ]


def outgoing_metadata(metadata: Sequence[tuple[str, str]] = ()) -> list[tuple[str, str]]:
    """Metadata for a call made while serving a request: the caller's plus
    the request id, tenant and trace context, unless the caller set them."""
    result = list(metadata)
    present = {key for key, _ in result}
    request_id = request_id_var.get()
    if request_id and REQUEST_ID_KEY not in present:
        result.append((REQUEST_ID_KEY, request_id))
    tenant = tenant_var.get()
    if tenant and TENANT_KEY not in present:
        result.append((TENANT_KEY, tenant))
    carrier: dict[str, str] = {}
    # traceparent/tracestate of the current span, when tracing is on.
    propagate.inject(carrier)
    result.extend(item for item in carrier.items() if item[0] not in present)
    return result


def propagated_timeout(timeout: float | None) -> float | None:
    """The call's timeout, shortened to what is left of the request's deadline."""
    deadline = deadline_var.get()
    if deadline == float("inf"):
        return timeout
    remaining = max(0.0, deadline - time.monotonic())
    return remaining if timeout is None else min(timeout, remaining)


def call_options(timeout: float | None = None, metadata: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
    """Keyword arguments for a stub call made on behalf of the current request."""
    return {"metadata": outgoing_metadata(metadata), "timeout": propagated_timeout(timeout)}


def _secure_options(options: list[tuple[str, Any]], server: Role) -> list[tuple[str, Any]]:
    # Check the server's certificate names the role we meant to reach,
    # whatever address we dialled (workers on other hosts included).
    return [*options, ("grpc.ssl_target_name_override", server_name(server))]


def open_channel(
    target: str, limits: LimitSettings, identity: ServiceIdentity | None, *, server: Role
) -> grpc.aio.Channel:
    """A channel to another service (`server`: its role). With this process's
    identity: mutual TLS; without (open dev mode): plaintext on loopback."""
    return dial(target, channel_options(limits), identity, server=server)


def dial(
    target: str, options: list[tuple[str, Any]], identity: ServiceIdentity | None, *, server: Role
) -> grpc.aio.Channel:
    """The one place an internal channel gets its credentials (any target
    form gRPC takes, e.g. several replicas behind one channel)."""
    if identity is None:
        return grpc.aio.insecure_channel(target, options=options)
    return grpc.aio.secure_channel(target, identity.channel_credentials(), options=_secure_options(options, server))


def open_sync_channel(target: str, identity: ServiceIdentity | None, *, server: Role) -> grpc.Channel:
    """The same for synchronous callers (the CLI)."""
    if identity is None:
        return grpc.insecure_channel(target)
    return grpc.secure_channel(target, identity.channel_credentials(), options=_secure_options([], server))


# Round robin over the replicas that are up. Calls that only read
# (a job, a file, a listing) are retried on UNAVAILABLE, which is how a
# call in flight on a replica that dies ends: the retry is picked onto
# another replica. The others get no retry policy: a call a replica
# received and failed may have done its work (SubmitBatch), so only gRPC's
# transparent retries apply to them (calls that never reached a server).
READ_ONLY_SCHEDULER_METHODS = (
    *("GetBatch", "ListBatches", "StreamBatchResults", "GetFile", "GetFileContent"),
    *("ListWorkers", "GetPoolStatus"),
)
_ROUND_ROBIN = json.dumps(
    {
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [
            {
                "name": [{"service": "headrace.v1.Scheduler", "method": m} for m in READ_ONLY_SCHEDULER_METHODS],
                "retryPolicy": {
                    "maxAttempts": 3,
                    "initialBackoff": "0.05s",
                    "maxBackoff": "0.5s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ],
    }
)


def balanced_target(targets: Sequence[str]) -> str:
    """One gRPC target naming every replica (`ipv4:a:p,b:q`), names
    resolved once, now; a single target is returned as it is."""
    if len(targets) == 1:
        return targets[0]
    addresses = []
    for target in targets:
        host, _, port = target.rpartition(":")
        host = host.strip("[]")
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            ip = ipaddress.ip_address(socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)[0][4][0])
        addresses.append((ip, port))
    if all(ip.version == 4 for ip, _ in addresses):
        return "ipv4:" + ",".join(f"{ip}:{port}" for ip, port in addresses)
    return "ipv6:" + ",".join(f"[{ip}]:{port}" for ip, port in addresses)


def open_balanced_channel(
    targets: Sequence[str], limits: LimitSettings, identity: ServiceIdentity | None, *, server: Role
) -> grpc.aio.Channel:
    """One channel over several replicas of a service (gRPC's round_robin:
    a replica that is down gets no calls once its connection has failed),
    for calls any of them answers alike. Same credentials as open_channel."""
    if len(targets) == 1:
        return open_channel(targets[0], limits, identity, server=server)
    options = [*channel_options(limits), ("grpc.service_config", _ROUND_ROBIN)]
    return dial(balanced_target(targets), options, identity, server=server)


class ChannelPool:
    """One channel per endpoint, reused for every call to it (the router
    talks to many workers)."""

    def __init__(self, limits: LimitSettings, identity: ServiceIdentity | None, *, server: Role) -> None:
        self._limits = limits
        self._identity = identity
        self._server = server
        self._channels: dict[str, grpc.aio.Channel] = {}

    def get(self, endpoint: str) -> grpc.aio.Channel:
        channel = self._channels.get(endpoint)
        if channel is None:
            channel = open_channel(endpoint, self._limits, self._identity, server=self._server)
            self._channels[endpoint] = channel
        return channel

    async def discard(self, endpoint: str) -> None:
        channel = self._channels.pop(endpoint, None)
        if channel is not None:
            await channel.close()

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close()
