"""What the batch and file endpoints share: who the caller is (tenant from
the API key, or the gateway's own dependency), and Headrace errors as
OpenAI error bodies with the status from the one error table."""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from headrace.runtime.auth import AUTHORIZATION_KEY, Authenticator
from headrace.runtime.errors import HeadraceError, InvalidArgument, mapping_for

log = logging.getLogger(__name__)

# Who is calling: the tenant, or raise errors.Unauthenticated.
TenantOf = Callable[[Request], str]


def tenant_from_api_key(authenticator: Authenticator) -> TenantOf:
    """The tenant of `Authorization: Bearer KEY` (any caller in open dev mode)."""

    def tenant_of(request: Request) -> str:
        return authenticator.authenticate(request.headers.get(AUTHORIZATION_KEY))

    return tenant_of


def error_response(error: HeadraceError, *, param: str | None = None) -> JSONResponse:
    mapping = mapping_for(error)
    headers = {}
    if error.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after_s)))
    return JSONResponse(
        {"error": {"message": error.message, "type": mapping.openai_type, "param": param, "code": None}},
        status_code=mapping.http_status,
        headers=headers,
    )


async def answer(request: Request, tenant_of: TenantOf, handle: Callable[[str], Awaitable[Response]]) -> Response:
    """Run `handle` for the caller's tenant; a Headrace error becomes its
    HTTP status with an OpenAI error body."""
    try:
        return await handle(tenant_of(request))
    except HeadraceError as exc:
        return error_response(exc)


def required_text(body: object, key: str) -> str:
    value = body.get(key) if isinstance(body, dict) else None
    if not isinstance(value, str) or not value:
        raise InvalidArgument(f"{key}: required, a non-empty string")
    return value
