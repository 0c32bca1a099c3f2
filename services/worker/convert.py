"""Proto <-> engine domain types for the worker, in small pure functions."""

from __future__ import annotations

from headrace.v1 import generation_pb2, scheduler_pb2, worker_pb2
from services.worker.engines.base import (
    ChatTurn,
    Delta,
    EngineStats,
    FinishReason,
    GenerationRequest,
    Priority,
    Sampling,
)

_PRIORITY_FROM_PROTO = {
    generation_pb2.PRIORITY_UNSPECIFIED: Priority.STANDARD,
    generation_pb2.PRIORITY_INTERACTIVE: Priority.INTERACTIVE,
    generation_pb2.PRIORITY_STANDARD: Priority.STANDARD,
    generation_pb2.PRIORITY_BATCH: Priority.BATCH,
}

FINISH_REASON_TO_PROTO = {
    FinishReason.STOP: generation_pb2.FINISH_REASON_STOP,
    FinishReason.LENGTH: generation_pb2.FINISH_REASON_LENGTH,
    FinishReason.ABORT: generation_pb2.FINISH_REASON_ABORT,
    FinishReason.ERROR: generation_pb2.FINISH_REASON_ERROR,
}


def sampling_from_proto(sampling: generation_pb2.SamplingParams) -> Sampling:
    def opt(name: str) -> object:
        return getattr(sampling, name) if sampling.HasField(name) else None  # type: ignore[arg-type]

    return Sampling(
        temperature=opt("temperature"),  # type: ignore[arg-type]
        top_p=opt("top_p"),  # type: ignore[arg-type]
        top_k=opt("top_k"),  # type: ignore[arg-type]
        max_tokens=opt("max_tokens"),  # type: ignore[arg-type]
        stop=tuple(sampling.stop),
        seed=opt("seed"),  # type: ignore[arg-type]
        presence_penalty=opt("presence_penalty"),  # type: ignore[arg-type]
        frequency_penalty=opt("frequency_penalty"),  # type: ignore[arg-type]
        repetition_penalty=opt("repetition_penalty"),  # type: ignore[arg-type]
        ignore_eos=sampling.ignore_eos,
        min_tokens=opt("min_tokens"),  # type: ignore[arg-type]
    )


def generation_request_from_proto(
    request: worker_pb2.WorkerGenerateRequest, *, whole_answer: bool = False
) -> GenerationRequest:
    """whole_answer: the caller takes the answer as one message (request.whole_answer, or a batch row)."""
    inner = request.request
    return GenerationRequest(
        request_id=request.request_id,
        model=request.model_version,
        prompt=inner.prompt if inner.prompt else None,
        messages=tuple(ChatTurn(m.role, m.content, m.name) for m in inner.messages),
        sampling=sampling_from_proto(inner.sampling),
        priority=_PRIORITY_FROM_PROTO.get(request.priority or inner.priority, Priority.STANDARD),
        whole_answer=whole_answer or request.whole_answer,
    )


def delta_to_proto(delta: Delta, request_id: str) -> generation_pb2.GenerateStreamResponse:
    message = generation_pb2.GenerateStreamResponse(request_id=request_id, text=delta.text, token_ids=delta.token_ids)
    if delta.finish_reason is not None:
        message.finish_reason = FINISH_REASON_TO_PROTO[delta.finish_reason]
        message.usage.CopyFrom(
            generation_pb2.Usage(
                prompt_tokens=delta.prompt_tokens,
                completion_tokens=delta.completion_tokens,
                total_tokens=delta.prompt_tokens + delta.completion_tokens,
                cached_prompt_tokens=delta.cached_prompt_tokens,
            )
        )
    return message


def stats_to_load(stats: EngineStats, *, healthy: bool, now_ms: int) -> scheduler_pb2.WorkerLoad:
    return scheduler_pb2.WorkerLoad(
        running=stats.running,
        waiting=stats.waiting,
        kv_cache_usage=stats.kv_cache_usage,
        tokens_per_second=stats.tokens_per_second,
        capacity=stats.capacity,
        healthy=healthy,
        reported_at_ms=now_ms,
    )
