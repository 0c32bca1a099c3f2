"""The /v1/files reader stops at its limit: an oversized multipart body is
refused after at most the limit (plus one chunk) was read, and nothing of
it is written to a temporary file."""

from __future__ import annotations

import tempfile
from typing import Any

import pytest
from starlette.formparsers import MultiPartParser
from starlette.requests import Request
from starlette.types import Message

from headrace.runtime.errors import InvalidArgument, PayloadTooLarge
from services.router.gateway.uploads import FORM_OVERHEAD_BYTES, read_upload

BOUNDARY = "b0undary"
PURPOSE = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'.encode()
FILE_HEAD = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="rows.jsonl"\r\n\r\n'.encode()
HEAD = PURPOSE + FILE_HEAD
TAIL = f"\r\n--{BOUNDARY}--\r\n".encode()
CHUNK = 64 * 1024


class Body:
    """An ASGI receive() that hands out a body chunk by chunk, counting."""

    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks
        self.read = 0

    async def __call__(self) -> Message:
        chunk = self._chunks.pop(0)
        self.read += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": bool(self._chunks)}


def request(body: Body, *, content_length: int | None = None, content_type: str = "") -> Request:
    headers = [(b"content-type", (content_type or f"multipart/form-data; boundary={BOUNDARY}").encode())]
    if content_length is not None:
        headers.append((b"content-length", str(content_length).encode()))
    scope: dict[str, Any] = {"type": "http", "method": "POST", "path": "/v1/files", "headers": headers}
    return Request(scope, body)


@pytest.fixture
def rollovers(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts spooled files rolled over to disk (/tmp)."""
    rolled: list[int] = []

    class Watched(tempfile.SpooledTemporaryFile):  # type: ignore[type-arg]
        def rollover(self) -> None:
            rolled.append(1)
            super().rollover()

    monkeypatch.setattr("starlette.formparsers.SpooledTemporaryFile", Watched)
    return rolled


async def test_a_streamed_body_over_the_limit_is_cut_off_at_the_limit(rollovers: list[int]) -> None:
    # Over Starlette's 1 MiB spool: a default parser would roll the file to /tmp.
    limit = 32 * CHUNK
    body = Body([HEAD] + [b"x" * CHUNK] * 400 + [TAIL])  # 25 MiB, no Content-Length
    with pytest.raises(PayloadTooLarge, match="over the limit"):
        await read_upload(request(body), max_file_bytes=limit)
    assert body.read <= limit + FORM_OVERHEAD_BYTES + CHUNK
    assert rollovers == []


async def test_a_declared_length_over_the_limit_is_refused_before_reading() -> None:
    body = Body([HEAD, b"x" * CHUNK, TAIL])
    with pytest.raises(PayloadTooLarge):
        await read_upload(request(body, content_length=10**9), max_file_bytes=CHUNK)
    assert body.read == 0


async def test_a_file_just_over_the_limit_inside_the_overhead_is_still_refused() -> None:
    body = Body([HEAD, b"x" * (CHUNK + 1), TAIL])
    with pytest.raises(PayloadTooLarge, match="file: over the limit"):
        await read_upload(request(body), max_file_bytes=CHUNK)


async def test_a_file_within_the_limit_is_read_in_memory(rollovers: list[int]) -> None:
    content = b'{"custom_id": "a"}\n' * 100_000  # 1.9 MB: over Starlette's default spool
    assert len(content) > MultiPartParser.spool_max_size
    upload = await read_upload(request(Body([HEAD, content, TAIL])), max_file_bytes=len(content))
    assert (upload.filename, upload.purpose, upload.content) == ("rows.jsonl", "batch", content)
    assert rollovers == []


@pytest.mark.parametrize(
    ("chunks", "content_type", "message"),
    [
        ([b"{}"], "application/json", "file: required"),
        ([PURPOSE + TAIL[2:]], "", "file: required"),
        ([FILE_HEAD + b"{}" + TAIL], "", "purpose: required"),
        ([b"--x\r\nnot a form"], "multipart/form-data", "multipart body"),
    ],
)
async def test_a_malformed_form_is_a_400(chunks: list[bytes], content_type: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        await read_upload(request(Body(chunks), content_type=content_type), max_file_bytes=CHUNK)
