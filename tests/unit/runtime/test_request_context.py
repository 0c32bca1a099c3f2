import time
from collections.abc import Iterator

import pytest

from headrace.runtime.channels import outgoing_metadata, propagated_timeout
from headrace.runtime.request_context import (
    accept_request_id,
    deadline_from_remaining,
    deadline_var,
    request_id_var,
    tenant_var,
)


@pytest.fixture(autouse=True)
def _restore_context() -> Iterator[None]:
    request_id = request_id_var.set(request_id_var.get())
    tenant = tenant_var.set(tenant_var.get())
    deadline = deadline_var.set(deadline_var.get())
    yield
    deadline_var.reset(deadline)
    tenant_var.reset(tenant)
    request_id_var.reset(request_id)


def test_safe_request_ids_are_kept_and_unsafe_replaced() -> None:
    assert accept_request_id("req-123.abc:x") == "req-123.abc:x"
    replaced = accept_request_id("bad id\nwith newline")
    assert replaced != "bad id\nwith newline" and len(replaced) == 32
    assert len(accept_request_id("x" * 500)) == 32
    assert len(accept_request_id(None)) == 32


def test_outgoing_calls_carry_request_id_and_tenant() -> None:
    request_id_var.set("r1")
    tenant_var.set("acme")
    assert outgoing_metadata() == [("x-request-id", "r1"), ("x-headrace-tenant", "acme")]
    # A caller's own values win.
    assert outgoing_metadata([("x-request-id", "mine")]) == [("x-request-id", "mine"), ("x-headrace-tenant", "acme")]


def test_deadline_bounds_outgoing_timeouts() -> None:
    deadline_var.set(float("inf"))
    assert propagated_timeout(None) is None
    assert propagated_timeout(3.0) == 3.0
    deadline_var.set(deadline_from_remaining(1.0))
    assert 0.9 < (propagated_timeout(None) or 0) <= 1.0
    assert propagated_timeout(0.2) == 0.2
    assert 0.9 < (propagated_timeout(10.0) or 0) <= 1.0
    deadline_var.set(time.monotonic() - 1)
    assert propagated_timeout(5.0) == 0.0
