"""The triton engine: one model on a Triton Inference Server, over gRPC
(`tritonclient.grpc.aio`).

At start it waits for the server and the model to be ready, reads the
model's config and decides what it serves (triton_model.py): embed for an
embedding model, generate for a decoupled text-generation model. Each
generation is one bidirectional stream carrying one request: the client
half-closes after sending it, so the server ends the stream after the
model's final response, and cancelling the stream (abort, or the caller
closing the iterator) cancels the request on the server.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from headrace.runtime.engine_settings import TritonEngineSettings
from headrace.runtime.errors import (
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    HeadraceError,
    Internal,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
    Unimplemented,
)
from services.worker.engines import triton_model
from services.worker.engines.backend_load import HEALTH_TIMEOUT_S, BackendLoad, probe
from services.worker.engines.base import (
    Delta,
    EngineStats,
    FinishReason,
    GenerationRequest,
    Sampling,
)
from services.worker.engines.triton_model import EmbeddingPlan, GenerationPlan, ModelPlan, TensorSpec

# gRPC status -> the error a caller sees. Everything else is Internal.
_ERRORS: dict[grpc.StatusCode, type[HeadraceError]] = {
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
}


class TritonEngine:
    kind = "triton"

    def __init__(self, settings: TritonEngineSettings) -> None:
        self._settings = settings
        self._client: Any = None
        self._plan: ModelPlan | None = None
        self._chat_template: Any = None
        self._load = BackendLoad(settings.max_concurrency)
        # Open generation streams by request id, and those being aborted.
        self._streams: dict[str, Any] = {}
        self._aborting: set[str] = set()

    @property
    def plan(self) -> ModelPlan:
        if self._plan is None:
            raise FailedPrecondition("triton engine: not started")
        return self._plan

    async def start(self) -> None:
        import tritonclient.grpc.aio as triton_grpc

        settings = self._settings
        self._client = triton_grpc.InferenceServerClient(settings.url, ssl=settings.ssl)
        await self._wait_until_ready()
        try:
            response = await self._client.get_model_config(
                settings.model_name, settings.model_version, client_timeout=settings.request_timeout_s
            )
        except Exception as exc:
            raise self._error(exc, "reading the model config") from exc
        shape = triton_model.shape_from_config(response.config)
        self._plan = triton_model.plan_model(shape, text_input=settings.text_input, text_output=settings.text_output)
        if settings.chat_template_from and isinstance(self._plan, GenerationPlan):
            self._chat_template = await asyncio.to_thread(_load_chat_template, settings.chat_template_from)

    async def _wait_until_ready(self) -> None:
        settings = self._settings
        deadline = time.monotonic() + settings.start_timeout_s
        why = "not ready"
        while True:
            try:
                ready = await self._client.is_server_live(client_timeout=HEALTH_TIMEOUT_S) and (
                    await self._client.is_model_ready(
                        settings.model_name, settings.model_version, client_timeout=HEALTH_TIMEOUT_S
                    )
                )
                if ready:
                    return
                why = f"model {settings.model_name!r} is not ready (is it loaded?)"
            except Exception as exc:
                why = _describe(exc)
            if time.monotonic() >= deadline:
                raise Unavailable(
                    f"triton at {settings.url}: model {settings.model_name!r} not ready "
                    f"after {settings.start_timeout_s:g} s: {why}"
                )
            await asyncio.sleep(0.25)

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        plan = self.plan
        if not isinstance(plan, EmbeddingPlan):
            raise Unimplemented(f"triton model {plan.shape.name!r} generates text; it does not embed")
        if not texts:
            return []
        limit = plan.texts_per_call
        per_call = self._settings.embed_batch_size if limit == 0 else min(limit, self._settings.embed_batch_size)
        chunks = [texts[i : i + per_call] for i in range(0, len(texts), per_call)]
        results = await asyncio.gather(*(self._embed_chunk(plan, chunk) for chunk in chunks))
        return [vector for chunk_vectors in results for vector in chunk_vectors]

    async def _embed_chunk(self, plan: EmbeddingPlan, texts: Sequence[str]) -> list[list[float]]:
        from tritonclient.grpc import InferInput, InferRequestedOutput

        batch = np.array([text.encode("utf-8") for text in texts], dtype=np.object_)
        if plan.shape.max_batch_size > 0:
            batch = batch.reshape(len(texts), 1)
        text_input = InferInput(plan.text_input.name, list(batch.shape), "BYTES")
        text_input.set_data_from_numpy(batch)
        async with self._load.slots:
            try:
                result = await self._client.infer(
                    self._settings.model_name,
                    [text_input],
                    model_version=self._settings.model_version,
                    outputs=[InferRequestedOutput(plan.vector_output.name)],
                    client_timeout=self._settings.request_timeout_s,
                )
            except Exception as exc:
                raise self._error(exc, "embed") from exc
        vectors = result.as_numpy(plan.vector_output.name)
        if vectors is None or vectors.size % len(texts):
            raise Internal(
                f"triton model {plan.shape.name!r} returned {None if vectors is None else vectors.shape} "
                f"for {len(texts)} texts"
            )
        return [[float(v) for v in row] for row in vectors.astype(np.float32).reshape(len(texts), -1)]

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[Delta, None]:
        plan = self.plan
        if not isinstance(plan, GenerationPlan):
            raise Unimplemented(f"triton model {plan.shape.name!r} is an embedding model; it does not generate")
        if request.request_id in self._streams:
            raise InvalidArgument(f"request {request.request_id!r} is already running")
        prompt = self._prompt(request)
        max_tokens = request.sampling.max_tokens or self._settings.default_max_tokens
        message = self._stream_request(plan, request, prompt, max_tokens)
        tally = _Tally()
        async with self._load.slots.at(request.priority):
            stream = self._client.stream_infer(_once(message), stream_timeout=self._settings.stream_timeout_s)
            self._streams[request.request_id] = stream
            finished = False
            try:
                while True:
                    try:
                        result, error = await stream.__anext__()
                    except StopAsyncIteration:
                        break
                    except (asyncio.CancelledError, grpc.aio.AioRpcError) as exc:
                        # abort() cancelled the call (grpc.aio reports that as
                        # CancelledError); a cancelled caller must still stop.
                        if request.request_id in self._aborting and not _caller_cancelled():
                            tally.aborted = True
                            break
                        if isinstance(exc, asyncio.CancelledError):
                            raise
                        raise self._error(exc, "generate") from exc
                    if error is not None:
                        raise self._error(error, "generate")
                    counted = tally.completion_tokens
                    text = tally.add(plan, result)
                    if tally.completion_tokens > counted:
                        # Tokens, not responses: a response may report several.
                        self._load.meter.add(tally.completion_tokens - counted)
                    if text:
                        yield Delta(text, prompt_tokens=tally.prompt_tokens, completion_tokens=tally.completion_tokens)
                finished = True
                yield Delta(
                    "",
                    finish_reason=tally.finish_reason(max_tokens),
                    prompt_tokens=tally.prompt_tokens,
                    completion_tokens=tally.completion_tokens,
                )
            finally:
                self._streams.pop(request.request_id, None)
                self._aborting.discard(request.request_id)
                if not finished:
                    # The caller went away (or it failed): free the request on the server.
                    stream.cancel()

    def _prompt(self, request: GenerationRequest) -> str:
        if request.prompt is not None:
            return request.prompt
        if self._chat_template is None:
            raise InvalidArgument(
                f"triton model {self.plan.shape.name!r} takes a text prompt; to send chat messages, "
                "set the engine's chat_template_from to a model folder whose tokenizer has a chat template"
            )
        turns = [{"role": turn.role, "content": turn.content} for turn in request.messages]
        return str(self._chat_template.apply_chat_template(turns, tokenize=False, add_generation_prompt=True))

    def _stream_request(
        self, plan: GenerationPlan, request: GenerationRequest, prompt: str, max_tokens: int
    ) -> dict[str, Any]:
        inputs = [_tensor(plan, plan.text_input, prompt.encode("utf-8"))]
        extras = plan.extras
        if triton_model.STREAM in extras:
            inputs.append(_tensor(plan, plan.shape.input(triton_model.STREAM), True))
        if triton_model.EXCLUDE_INPUT_IN_OUTPUT in extras:
            inputs.append(_tensor(plan, plan.shape.input(triton_model.EXCLUDE_INPUT_IN_OUTPUT), True))
        if triton_model.SAMPLING_PARAMETERS in extras:
            parameters = json.dumps(_sampling_parameters(request.sampling, max_tokens))
            inputs.append(_tensor(plan, plan.shape.input(triton_model.SAMPLING_PARAMETERS), parameters.encode()))
        for flag, output in triton_model.REPORTS.items():
            if flag in extras and output in plan.reports:
                inputs.append(_tensor(plan, plan.shape.input(flag), True))
        return {
            "model_name": self._settings.model_name,
            "model_version": self._settings.model_version,
            "inputs": inputs,
            "request_id": request.request_id,
        }

    async def abort(self, request_id: str) -> bool:
        stream = self._streams.get(request_id)
        if stream is None:
            return False
        self._aborting.add(request_id)
        stream.cancel()
        return True

    @property
    def running(self) -> int:
        return self._load.running

    def stats(self) -> EngineStats:
        return self._load.stats()

    async def health(self) -> bool:
        client, settings = self._client, self._settings
        if client is None:
            return False

        async def live_and_ready(timeout_s: float) -> bool:
            return bool(
                await client.is_server_live(client_timeout=timeout_s)
                and await client.is_model_ready(settings.model_name, settings.model_version, client_timeout=timeout_s)
            )

        return await probe(live_and_ready)

    async def close(self) -> None:
        for stream in list(self._streams.values()):
            stream.cancel()
        if self._client is not None:
            await self._client.close()
            self._client = None

    def _error(self, exc: BaseException, during: str) -> HeadraceError:
        """A tritonclient or gRPC error as the Headrace error it means."""
        settings = self._settings
        code = _status_of(exc)
        cls = _ERRORS.get(code, Internal) if code is not None else Internal
        where = f"triton at {settings.url}, model {settings.model_name!r}"
        if cls is Unavailable:
            return Unavailable(f"{where} is unavailable ({during}): {_describe(exc)}")
        return cls(f"{where}: {during} failed: {_describe(exc)}")


@dataclass
class _Tally:
    """What the responses of one generation said so far."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    reported_finish: str = ""
    aborted: bool = False

    def add(self, plan: GenerationPlan, result: Any) -> str:
        texts = result.as_numpy(plan.text_output.name)
        text = "".join(_text(t) for t in texts.reshape(-1)) if texts is not None else ""
        counted = False
        if "num_input_tokens" in plan.reports:
            value = result.as_numpy("num_input_tokens")
            if value is not None and value.size:
                self.prompt_tokens = max(self.prompt_tokens, int(value.reshape(-1)[0]))
        if "num_output_tokens" in plan.reports:
            value = result.as_numpy("num_output_tokens")
            if value is not None and value.size:
                self.completion_tokens += int(value.reshape(-1).sum())
                counted = True
        if not counted and text:
            # No count reported: one streamed response is one token (vLLM's way).
            self.completion_tokens += 1
        if "finish_reason" in plan.reports:
            value = result.as_numpy("finish_reason")
            if value is not None and value.size:
                reason = _text(value.reshape(-1)[0])
                if reason and reason != "None":
                    self.reported_finish = reason
        return text

    def finish_reason(self, max_tokens: int) -> FinishReason:
        if self.aborted or self.reported_finish == "abort":
            return FinishReason.ABORT
        if self.reported_finish == "length":
            return FinishReason.LENGTH
        if self.reported_finish:
            return FinishReason.STOP
        return FinishReason.LENGTH if self.completion_tokens >= max_tokens else FinishReason.STOP


def _tensor(plan: GenerationPlan, spec: TensorSpec | None, value: bytes | bool) -> Any:
    from tritonclient.grpc import InferInput

    assert spec is not None
    array = np.array([value], dtype=np.object_ if isinstance(value, bytes) else np.bool_)
    if plan.shape.max_batch_size > 0:
        array = array.reshape(1, 1)
    tensor = InferInput(spec.name, list(array.shape), spec.datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def _sampling_parameters(sampling: Sampling, max_tokens: int) -> dict[str, Any]:
    """vLLM's SamplingParams names, the vLLM backend's `sampling_parameters`."""
    parameters: dict[str, Any] = {"max_tokens": max_tokens}
    for name in (
        "temperature",
        "top_p",
        "top_k",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "repetition_penalty",
        "min_tokens",
    ):
        value = getattr(sampling, name)
        if value is not None:
            parameters[name] = value
    if sampling.stop:
        parameters["stop"] = list(sampling.stop)
    if sampling.ignore_eos:
        parameters["ignore_eos"] = True
    return parameters


async def _once(message: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    yield message


def _caller_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _text(value: object) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def _status_of(exc: BaseException) -> grpc.StatusCode | None:
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code()
    status = getattr(exc, "status", None)
    if callable(status):
        # tritonclient's InferenceServerException: "StatusCode.UNAVAILABLE".
        name = str(status() or "").removeprefix("StatusCode.")
        return grpc.StatusCode.__members__.get(name)
    return None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return str(exc.details() or exc.code().name)
    message = getattr(exc, "message", None)
    if callable(message):
        return str(message())
    return str(exc) or type(exc).__name__


def _load_chat_template(folder: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, local_files_only=True)
