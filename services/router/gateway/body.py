"""Request bodies: bounded in size (413 past the limit, before the body is
read when Content-Length says so), decoded as bounded JSON (UTF-8, no lone
surrogates, nesting bounded: headrace/request_rules/json_input.py) and
validated into the protocol's models, with errors that name the field
(400). Every JSON body and WebSocket message the gateway takes comes
through here."""

from __future__ import annotations

import re
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request

from headrace.request_rules.json_input import JsonInputError, loads_bounded
from headrace.runtime.errors import Cancelled, InvalidArgument, PayloadTooLarge

M = TypeVar("M", bound=BaseModel)

# Parts of a pydantic error location that name a branch of a union, not a field.
_BRANCH = re.compile(r"^(str|int|float|bool|none|list|dict)$|[\[\-]")
_MAX_REPORTED = 3


def too_large(size: int, limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body: {size} bytes is over the limit of {limit} bytes")


async def read_body(request: Request, max_bytes: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_large(int(declared), max_bytes)
    received = bytearray()
    try:
        async for chunk in request.stream():
            received += chunk
            if len(received) > max_bytes:
                raise too_large(len(received), max_bytes)
    except ClientDisconnect:
        # Gone mid-body, or cut off by the server's body read timeout
        # (http_limits.py): nobody is left to answer, and no bug to log.
        raise Cancelled("request body: the client went away before sending all of it") from None
    return bytes(received)


def field_path(location: tuple[int | str, ...]) -> str:
    path = ""
    for part in location:
        if isinstance(part, int):
            path += f"[{part}]"
        elif not _BRANCH.search(part):
            path += f".{part}" if path else part
    return path or "request body"


def describe(error: ValidationError) -> str:
    messages = []
    for item in error.errors()[:_MAX_REPORTED]:
        path = field_path(tuple(item["loc"]))
        if item["type"] == "extra_forbidden":
            messages.append(f"Unrecognized request argument supplied: {path}")
        elif item["type"] == "missing":
            messages.append(f"{path}: required")
        else:
            messages.append(f"{path}: {item['msg']}")
    return "; ".join(dict.fromkeys(messages))


def parse_object(raw: bytes | str) -> dict[str, Any]:
    """A JSON object from a body or message, or InvalidArgument (400)."""
    try:
        data: Any = loads_bounded(raw)
    except JsonInputError as exc:
        raise InvalidArgument(exc.message) from None
    if not isinstance(data, dict):
        raise InvalidArgument("request body: expected a JSON object")
    return data


def validate_model(data: dict[str, Any], model: type[M]) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidArgument(describe(exc)) from exc


def parse_model(raw: bytes | str, model: type[M]) -> M:
    return validate_model(parse_object(raw), model)


async def read_model(request: Request, model: type[M], *, max_bytes: int) -> M:
    return parse_model(await read_body(request, max_bytes), model)
