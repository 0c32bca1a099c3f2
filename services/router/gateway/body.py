"""Request bodies: bounded in size (413 past the limit, before the body is
read when Content-Length says so), parsed as JSON, and validated into the
protocol's models with errors that name the field (400)."""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from headrace.runtime.errors import InvalidArgument, PayloadTooLarge

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
    async for chunk in request.stream():
        received += chunk
        if len(received) > max_bytes:
            raise too_large(len(received), max_bytes)
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


def parse_model(raw: bytes | str, model: type[M]) -> M:
    try:
        data: Any = json.loads(raw)
    except ValueError as exc:
        raise InvalidArgument(f"request body: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise InvalidArgument("request body: expected a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidArgument(describe(exc)) from exc


async def read_model(request: Request, model: type[M], *, max_bytes: int) -> M:
    return parse_model(await read_body(request, max_bytes), model)
