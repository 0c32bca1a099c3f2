"""Results as OpenAI's output and error file lines."""

from __future__ import annotations

import json

from headrace.batch.output_lines import is_error, jsonl, result_line, row_request_id
from headrace.v1 import batch_pb2, generation_pb2

BATCH = "batch_0123abcd"


def answered(**response: object) -> batch_pb2.BatchResult:
    return batch_pb2.BatchResult(
        custom_id="q1",
        line=3,
        finished_at=1_700_000_000,
        response=generation_pb2.GenerateResponse(
            request_id=row_request_id(BATCH, 3),
            model="smollm2@1",
            text="a river",
            finish_reason=generation_pb2.FINISH_REASON_STOP,
            usage=generation_pb2.Usage(prompt_tokens=5, completion_tokens=2, total_tokens=7),
            **response,  # type: ignore[arg-type]
        ),
    )


def test_a_chat_answer_is_a_chat_completion() -> None:
    line = result_line(answered(), batch_id=BATCH, endpoint="/v1/chat/completions")
    assert line["id"] == "batch_req_0123abcd_3" and line["custom_id"] == "q1" and line["error"] is None
    response = line["response"]
    assert response["status_code"] == 200 and response["request_id"] == "batch_0123abcd-3"
    body = response["body"]
    assert body["object"] == "chat.completion" and body["created"] == 1_700_000_000 and body["model"] == "smollm2@1"
    assert body["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": "a river"}, "finish_reason": "stop", "logprobs": None}
    ]
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}


def test_a_completion_answer_is_a_text_completion() -> None:
    body = result_line(answered(), batch_id=BATCH, endpoint="/v1/completions")["response"]["body"]
    assert body["object"] == "text_completion" and body["choices"][0]["text"] == "a river"


def test_embeddings_are_an_embedding_list() -> None:
    result = batch_pb2.BatchResult(
        custom_id="e",
        line=1,
        embedding=generation_pb2.EmbedResponse(
            model="minilm@1",
            embeddings=[generation_pb2.Embedding(index=0, values=[0.5, 0.25])],
            usage=generation_pb2.Usage(prompt_tokens=2, total_tokens=2),
        ),
    )
    body = result_line(result, batch_id=BATCH, endpoint="/v1/embeddings")["response"]["body"]
    assert body == {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.5, 0.25]}],
        "model": "minilm@1",
        "usage": {"prompt_tokens": 2, "total_tokens": 2},
    }


def test_a_failed_row_is_an_error_line() -> None:
    failed = batch_pb2.BatchResult(
        custom_id="q9", line=9, error=batch_pb2.BatchRowError(code="row_failed", message="failed after 3 attempts")
    )
    assert is_error(failed) and not is_error(answered())
    assert result_line(failed, batch_id=BATCH, endpoint="/v1/chat/completions") == {
        "id": "batch_req_0123abcd_9",
        "custom_id": "q9",
        "response": None,
        "error": {"code": "row_failed", "message": "failed after 3 attempts"},
    }


def test_jsonl_is_one_compact_object_per_line() -> None:
    data = jsonl([{"a": 1}, {"b": "é"}])
    assert data == '{"a":1}\n{"b":"é"}\n'.encode()
    assert [json.loads(x) for x in data.splitlines()] == [{"a": 1}, {"b": "é"}]
