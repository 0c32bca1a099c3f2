"""What one request carries across every hop: its id, its tenant and its
deadline. Server interceptors set these from incoming metadata; client
interceptors put them on outgoing calls, so a deadline set by the caller
bounds the whole chain, and logs and traces share one request id."""

from __future__ import annotations

import re
import time
import uuid
from contextvars import ContextVar
from typing import Final

REQUEST_ID_KEY: Final = "x-request-id"
# Internal hops only: the router authenticates and passes the tenant on.
TENANT_KEY: Final = "x-headrace-tenant"

_SAFE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")

request_id_var: ContextVar[str] = ContextVar("headrace_request_id", default="")
tenant_var: ContextVar[str] = ContextVar("headrace_tenant", default="")
# Absolute time.monotonic() after which the current request is late; inf: none.
deadline_var: ContextVar[float] = ContextVar("headrace_deadline", default=float("inf"))


def new_request_id() -> str:
    return uuid.uuid4().hex


def accept_request_id(candidate: str | None) -> str:
    """A caller's request id when it is safe to log and echo, else a new one."""
    if candidate and _SAFE_ID.match(candidate):
        return candidate
    return new_request_id()


def current_request_id() -> str:
    return request_id_var.get()


def current_tenant() -> str:
    return tenant_var.get()


def remaining_s() -> float | None:
    """Seconds left before the current request's deadline; None if it has none."""
    deadline = deadline_var.get()
    if deadline == float("inf"):
        return None
    return deadline - time.monotonic()


def deadline_from_remaining(remaining: float | None) -> float:
    if remaining is None:
        return float("inf")
    return time.monotonic() + remaining
