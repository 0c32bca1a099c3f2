"""Results of a batch job in OpenAI's output and error file formats: one
JSON object per line,

    {"id": "batch_req_...", "custom_id": "q1",
     "response": {"status_code": 200, "request_id": "...", "body": {chat.completion}},
     "error": null}

and for a row that failed (the error file):

    {"id": "batch_req_...", "custom_id": "q1", "response": null,
     "error": {"code": "row_failed", "message": "failed after 3 attempts: ..."}}
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from headrace.v1 import batch_pb2, generation_pb2

_FINISH_REASONS = {
    generation_pb2.FINISH_REASON_STOP: "stop",
    generation_pb2.FINISH_REASON_LENGTH: "length",
    generation_pb2.FINISH_REASON_ABORT: "abort",
    generation_pb2.FINISH_REASON_ERROR: "error",
}


def row_request_id(batch_id: str, line: int) -> str:
    """The request id of a row's run: stable, so a rerun of the row after a
    redelivery is recognisable in logs and traces."""
    return f"{batch_id}-{line}"


def result_line_id(batch_id: str, line: int) -> str:
    return f"batch_req_{batch_id.removeprefix('batch_')}_{line}"


def is_error(result: batch_pb2.BatchResult) -> bool:
    return result.WhichOneof("outcome") == "error"


def response_body(result: batch_pb2.BatchResult, endpoint: str) -> dict[str, Any]:
    """The body an online call to `endpoint` would have answered."""
    if result.WhichOneof("outcome") == "embedding":
        embedded = result.embedding
        return {
            "object": "list",
            "data": [
                {"object": "embedding", "index": e.index, "embedding": list(e.values)} for e in embedded.embeddings
            ],
            "model": embedded.model,
            "usage": {"prompt_tokens": embedded.usage.prompt_tokens, "total_tokens": embedded.usage.total_tokens},
        }
    answer = result.response
    usage = {
        "prompt_tokens": answer.usage.prompt_tokens,
        "completion_tokens": answer.usage.completion_tokens,
        "total_tokens": answer.usage.total_tokens,
    }
    finish_reason = _FINISH_REASONS.get(answer.finish_reason, "stop")
    if endpoint == "/v1/completions":
        return {
            "id": f"cmpl-{answer.request_id}",
            "object": "text_completion",
            "created": result.finished_at,
            "model": answer.model,
            "choices": [{"index": 0, "text": answer.text, "finish_reason": finish_reason, "logprobs": None}],
            "usage": usage,
        }
    return {
        "id": f"chatcmpl-{answer.request_id}",
        "object": "chat.completion",
        "created": result.finished_at,
        "model": answer.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer.text},
                "finish_reason": finish_reason,
                "logprobs": None,
            }
        ],
        "usage": usage,
    }


def result_line(result: batch_pb2.BatchResult, *, batch_id: str, endpoint: str) -> dict[str, Any]:
    line: dict[str, Any] = {"id": result_line_id(batch_id, result.line), "custom_id": result.custom_id}
    if is_error(result):
        line["response"] = None
        line["error"] = {"code": result.error.code, "message": result.error.message}
        return line
    request_id = result.response.request_id if result.HasField("response") else row_request_id(batch_id, result.line)
    line["response"] = {"status_code": 200, "request_id": request_id, "body": response_body(result, endpoint)}
    line["error"] = None
    return line


def jsonl(lines: Iterable[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(line, separators=(",", ":"), ensure_ascii=False).encode() + b"\n" for line in lines)
