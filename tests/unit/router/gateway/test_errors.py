"""Every Headrace error becomes OpenAI's error JSON with the table's status."""

from __future__ import annotations

import json

import pytest

from headrace.runtime import errors
from services.router.gateway.errors import error_response


@pytest.mark.parametrize(
    ("error", "status", "type_", "code", "retry_after"),
    [
        (errors.InvalidArgument("max_tokens: bad"), 400, "invalid_request_error", "invalid_argument", None),
        (errors.Unauthenticated("no key"), 401, "authentication_error", "unauthenticated", None),
        (errors.NotFound("no model"), 404, "not_found_error", "not_found", None),
        (errors.PayloadTooLarge("big"), 413, "invalid_request_error", "payload_too_large", None),
        (errors.RateLimited("slow down", retry_after_s=2.2), 429, "rate_limit_error", "rate_limited", "3"),
        (errors.QueueFull("full", retry_after_s=1), 429, "rate_limit_error", "queue_full", "1"),
        (errors.NoWorkerAvailable("none", retry_after_s=1), 503, "service_unavailable", "no_worker_available", "1"),
        (errors.DeadlineExceeded("late"), 504, "timeout", "deadline_exceeded", None),
        (errors.Internal("bug"), 500, "server_error", "internal", None),
    ],
)
def test_status_body_and_retry_after(
    error: errors.HeadraceError, status: int, type_: str, code: str, retry_after: str | None
) -> None:
    response = error_response(error)
    assert response.status_code == status
    body = json.loads(bytes(response.body))
    assert body == {"error": {"message": error.message, "type": type_, "param": None, "code": code}}
    # Whole seconds, rounded up (2.2 s -> 3).
    assert response.headers.get("retry-after") == retry_after
