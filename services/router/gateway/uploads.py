"""multipart/form-data uploads (POST /v1/files), read as a bounded stream.

The body is counted as it arrives and refused (413) as soon as it passes
the limit: a declared Content-Length over it is refused before a byte is
read, and a chunked body is cut off at the limit, so neither memory nor
/tmp ever holds more than the limit. The file part is kept in memory (it
leaves in one gRPC message anyway): nothing is spooled to disk."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from headrace.runtime.errors import InvalidArgument, PayloadTooLarge
from services.router.gateway.body import too_large

# Room beside the file for the multipart framing and the form's small
# fields (purpose, the part headers).
FORM_OVERHEAD_BYTES = 64 * 1024


@dataclass(frozen=True)
class Upload:
    filename: str
    purpose: str
    content: bytes


async def _bounded(stream: AsyncIterator[bytes], limit: int) -> AsyncGenerator[bytes, None]:
    received = 0
    async for chunk in stream:
        received += len(chunk)
        if received > limit:
            raise too_large(received, limit)
        yield chunk


async def read_upload(request: Request, *, max_file_bytes: int, default_filename: str = "upload.jsonl") -> Upload:
    """The form's `file` and `purpose`; 400 for a malformed form, 413 past the limit."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InvalidArgument("file: required (multipart/form-data)")
    limit = max_file_bytes + FORM_OVERHEAD_BYTES
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(int(declared), limit)
    parser = MultiPartParser(
        request.headers, _bounded(request.stream(), limit), max_files=1, max_fields=8, max_part_size=FORM_OVERHEAD_BYTES
    )
    # In memory up to the limit, never rolled over to a file in /tmp.
    parser.spool_max_size = limit
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise InvalidArgument(f"multipart body: {exc.message}") from None
    try:
        file, purpose = form.get("file"), form.get("purpose")
        if not isinstance(file, UploadFile):
            raise InvalidArgument("file: required (multipart/form-data)")
        if not isinstance(purpose, str) or not purpose:
            raise InvalidArgument("purpose: required; 'batch' for batch input files")
        content = await file.read()
        if len(content) > max_file_bytes:
            raise PayloadTooLarge(f"file: over the limit of {max_file_bytes} bytes")
        return Upload(filename=file.filename or default_filename, purpose=purpose, content=content)
    finally:
        await form.close()
