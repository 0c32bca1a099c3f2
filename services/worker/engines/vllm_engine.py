"""The vllm engine: vLLM's AsyncLLM in the worker's process.

AsyncLLM spawns its engine core (and, on a CPU, a worker) as processes, so
whatever runs this engine must guard its entry point. Requests stream with
RequestOutputKind.DELTA: each output carries the tokens new since the last;
a batch row, which only its whole answer is wanted of, asks FINAL_ONLY (one
output at its end: no per-token RequestOutput, queue hop and wakeup in this
process, whose CPU the engine core shares on a CPU host).

Load for the scheduler comes from the engine core itself: vLLM hands the
SchedulerStats of every step (running, waiting, KV-cache use) to stat
loggers, and _SchedulerProbe is one. vLLM marks that interface as not
stable; it is the one place here to change if it moves.

Settings map to vLLM as follows (docs/engines.md has the full table): on a
CPU host the cpu_* fields become the VLLM_* environment variables the engine
core reads, which is why they are set in this process's environment before
the engine starts; the rest are AsyncEngineArgs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from headrace.models.store import default_models_dir, model_path
from headrace.runtime.engine_settings import VllmEngineSettings
from headrace.runtime.errors import (
    HeadraceError,
    Internal,
    InvalidArgument,
    Unavailable,
    Unimplemented,
)
from services.worker.engines.base import (
    Delta,
    EngineStats,
    FinishReason,
    GenerationRequest,
    Priority,
    Sampling,
)
from services.worker.engines.throughput import ThroughputMeter

if TYPE_CHECKING:
    from vllm import SamplingParams
    from vllm.v1.engine.async_llm import AsyncLLM

log = logging.getLogger(__name__)

_FINISH_REASONS = {
    "stop": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "abort": FinishReason.ABORT,
    "error": FinishReason.ERROR,
    # vLLM's repetition detector ends the sequence like a stop string would.
    "repetition": FinishReason.STOP,
}


@dataclass(frozen=True)
class TokenScore:
    token_id: int
    # Natural log of the token's probability given the tokens before it.
    logprob: float
    # 1 when no token was likelier (greedy decoding would pick it).
    rank: int


class _SchedulerProbe:
    """The latest SchedulerStats of each engine core, as vLLM reports them
    after every step (and after a step that only retires finished or
    aborted requests, so an idle engine's last report shows it idle)."""

    def __init__(self) -> None:
        # engine index -> (running, waiting, kv-cache usage 0..1)
        self._by_engine: dict[int, tuple[int, int, float]] = {}
        # Totals over the engine cores, summed once a step: the worker reads
        # `running` for every delta it sends.
        self.running = 0
        self.waiting = 0
        self.kv_cache_usage = 0.0

    def record(self, engine_idx: int, running: int, waiting: int, kv_cache_usage: float) -> None:
        self._by_engine[engine_idx] = (running, waiting, kv_cache_usage)
        values = self._by_engine.values()
        self.running = sum(v[0] for v in values)
        self.waiting = sum(v[1] for v in values)
        self.kv_cache_usage = max(v[2] for v in values)


def _stat_logger_factory(probe: _SchedulerProbe) -> Any:
    """A per-engine vLLM stat logger class that feeds `probe`."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class SchedulerProbeLogger(StatLoggerBase):
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            self._engine_index = engine_index

        def record(
            self,
            scheduler_stats: Any,
            iteration_stats: Any,
            mm_cache_stats: Any = None,
            engine_idx: int = 0,
        ) -> None:
            if scheduler_stats is not None:
                probe.record(
                    engine_idx,
                    scheduler_stats.num_running_reqs,
                    scheduler_stats.num_waiting_reqs + scheduler_stats.num_skipped_waiting_reqs,
                    scheduler_stats.kv_cache_usage,
                )

        def log_engine_initialized(self) -> None:
            return None

    return SchedulerProbeLogger


# Times an abort is repeated for requests still open (0.05 s, doubling: 3.15 s in all).
_ABORT_CHECKS = 6


class VllmEngine:
    kind = "vllm"

    def __init__(self, settings: VllmEngineSettings, *, models_dir: Path | None = None) -> None:
        self._settings = settings
        self._models_dir = models_dir if models_dir is not None else default_models_dir()
        self._llm: AsyncLLM | None = None
        self._probe = _SchedulerProbe()
        self._meter = ThroughputMeter()
        # Request ids whose stream is open here (abort reports on these).
        self._active: set[str] = set()
        # Request ids still being rendered (not in the engine core yet), and
        # those of them aborted meanwhile: they end before reaching it. A
        # burst of batch rows spends a while here under load, and a
        # preemption that skipped them let them run (rows the worker had
        # chosen to stop kept their slots while online work waited).
        self._rendering: set[str] = set()
        self._aborted_rendering: set[str] = set()
        # Checks that aborts took (see _abort_until_gone).
        self._abort_checks: set[asyncio.Task[None]] = set()
        self._default_sampling: dict[str, Any] = {}
        self._max_model_len = 0
        self._closed = False

    @property
    def model(self) -> str:
        """The model folder (or hub id) the engine loads."""
        if self._settings.model is not None:
            return self._settings.model
        return str(model_path(self._settings.prepared_model, self._models_dir))

    async def start(self) -> None:
        if self._llm is not None:
            return
        model = self.model
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.platforms import current_platform
        from vllm.v1.engine.async_llm import AsyncLLM

        _set_engine_environment(self._settings, cpu=current_platform.is_cpu())

        args = AsyncEngineArgs(**engine_args(self._settings, model))
        started = time.monotonic()
        try:
            self._llm = AsyncLLM.from_engine_args(args, stat_loggers=[_stat_logger_factory(self._probe)])
        except Exception as exc:
            raise Unavailable(f"vLLM failed to start with model {model}: {exc}") from exc
        model_config = self._llm.model_config
        self._max_model_len = int(model_config.max_model_len)
        # The model's own sampling defaults (generation_config.json), as vLLM's
        # OpenAI server applies them: a request's explicit values win.
        self._default_sampling = dict(model_config.get_diff_sampling_param())
        log.info(
            "vLLM ready in %.1f s: model %s, max_model_len %d, max_num_seqs %d",
            time.monotonic() - started,
            model,
            self._max_model_len,
            self._settings.max_num_seqs,
        )

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[Delta, None]:
        llm = self._require_started()
        self._rendering.add(request.request_id)
        try:
            engine_input = await self._render(llm, request)
        finally:
            # However the render ends (a failure, a cancel): nothing kept.
            self._rendering.discard(request.request_id)
            aborted = request.request_id in self._aborted_rendering
            self._aborted_rendering.discard(request.request_id)
        prompt_len = len(engine_input.get("prompt_token_ids") or ())
        if aborted:
            # Aborted before it reached the engine core: it ends as an
            # aborted request there would, with nothing generated.
            yield Delta(
                text="",
                token_ids=(),
                finish_reason=FinishReason.ABORT,
                prompt_tokens=prompt_len,
                completion_tokens=0,
            )
            return
        params = sampling_params(
            request.sampling,
            prompt_len=prompt_len,
            max_model_len=self._max_model_len,
            default_max_tokens=self._settings.default_max_tokens,
            model_defaults=self._default_sampling,
            # Only batch rows: a unary online answer is whole too, but its
            # deltas give the router the time to first token.
            final_only=request.whole_answer and request.priority == Priority.BATCH,
        )
        priority = int(request.priority) if self._settings.scheduling_policy == "priority" else 0
        stream = llm.generate(engine_input, params, request.request_id, priority=priority)
        self._active.add(request.request_id)
        completion_tokens = 0
        try:
            async for output in stream:
                completion = output.outputs[0]
                token_ids = tuple(completion.token_ids)
                completion_tokens += len(token_ids)
                self._meter.add(len(token_ids))
                finish = None
                if output.finished:
                    finish = _FINISH_REASONS.get(completion.finish_reason or "", FinishReason.ERROR)
                yield Delta(
                    text=completion.text,
                    token_ids=token_ids,
                    finish_reason=finish,
                    prompt_tokens=len(output.prompt_token_ids or ()) or prompt_len,
                    completion_tokens=completion_tokens,
                    cached_prompt_tokens=output.num_cached_tokens or 0,
                )
        except HeadraceError:
            raise
        except Exception as exc:
            raise _map_error(exc) from exc
        finally:
            self._active.discard(request.request_id)
            # Closing vLLM's generator early (our consumer left) makes it abort
            # the request in the engine core: the sequence and its KV blocks go.
            await stream.aclose()

    async def score(self, request: GenerationRequest, continuation: Sequence[int] = ()) -> list[TokenScore]:
        """How likely the model finds a text: each token's log-probability
        given the tokens before it, and its rank among the model's choices
        there (1: the token greedy decoding would pick). The request is
        rendered as generate renders it (chat template and all); with a
        continuation (token ids), the scores are those of the continuation
        after the rendered request, otherwise of every prompt token after the
        first. For quality measurements (bench/quant.py: perplexity on a held
        text, and whether another version's greedy answer is this one's too)."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        llm = self._require_started()
        engine_input = await self._render(llm, request)
        prompt_ids = list(engine_input.get("prompt_token_ids") or ())
        token_ids = prompt_ids + list(continuation)
        if len(token_ids) >= self._max_model_len:
            raise InvalidArgument(
                f"{len(token_ids)} tokens to score do not fit the {self._max_model_len}-token context"
            )
        # One token is generated (vLLM needs one); prompt_logprobs=0 returns
        # the logprob and rank of each prompt token (and skips the prefix
        # cache, which would leave cached positions unscored).
        params = SamplingParams(
            max_tokens=1, temperature=0.0, prompt_logprobs=0, output_kind=RequestOutputKind.FINAL_ONLY
        )
        final = None
        stream = llm.generate({"prompt_token_ids": token_ids}, params, request.request_id)
        try:
            async for output in stream:
                final = output
        except HeadraceError:
            raise
        except Exception as exc:
            raise _map_error(exc) from exc
        finally:
            # A caller that leaves early aborts the request in the engine core.
            await stream.aclose()
        if final is None or final.prompt_logprobs is None:
            raise Internal("vLLM returned no prompt logprobs")
        first = len(prompt_ids) if continuation else 1
        scores = []
        for position in range(first, len(token_ids)):
            entry = final.prompt_logprobs[position][token_ids[position]]  # type: ignore[index]
            # vLLM always ranks the tokens it was asked about.
            rank = entry.rank if entry.rank is not None else 0
            scores.append(TokenScore(token_id=token_ids[position], logprob=float(entry.logprob), rank=int(rank)))
        return scores

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        raise Unimplemented("the vllm engine serves generation; embeddings come from an `embeddings` pool")

    async def abort(self, request_id: str) -> bool:
        return await self.abort_many([request_id]) == 1

    async def abort_many(self, request_ids: Sequence[str]) -> int:
        """Abort those of the requests that are here: the ones in the engine
        core in one call to it, the ones still being rendered as they leave
        the renderer (they never reach the core); returns how many were."""
        if self._llm is None:
            return 0
        rendering = [request_id for request_id in request_ids if request_id in self._rendering]
        self._aborted_rendering.update(rendering)
        active = [request_id for request_id in request_ids if request_id in self._active]
        if active:
            await self._llm.abort(active)
            check = asyncio.create_task(self._abort_until_gone(active), name="vllm-abort-check")
            self._abort_checks.add(check)
            check.add_done_callback(self._abort_checks.discard)
        return len(active) + len(rendering)

    async def _abort_until_gone(self, request_ids: Sequence[str]) -> None:
        """vLLM ignores an abort that comes before it has registered the
        request (its own input processing, after our generate() began): a
        batch row aborted then ran to its end, holding its slot. Those still
        open here a moment later are aborted again, a few times, backing off
        (an abort that took ends its request within an engine step)."""
        delay_s = 0.05
        for _ in range(_ABORT_CHECKS):
            await asyncio.sleep(delay_s)
            open_here = [request_id for request_id in request_ids if request_id in self._active]
            if not open_here or self._llm is None:
                return
            await self._llm.abort(open_here)
            delay_s *= 2

    @property
    def running(self) -> int:
        return self._probe.running

    def stats(self) -> EngineStats:
        probe = self._probe
        return EngineStats(
            running=probe.running,
            waiting=probe.waiting,
            capacity=self._settings.max_num_seqs,
            kv_cache_usage=probe.kv_cache_usage,
            tokens_per_second=self._meter.rate(),
        )

    async def health(self) -> bool:
        return self._llm is not None and not self._closed and not self._llm.errored

    async def close(self) -> None:
        self._closed = True
        for check in list(self._abort_checks):
            check.cancel()
        llm, self._llm = self._llm, None
        if llm is not None:
            # Stop reading outputs first: otherwise vLLM's output handler logs the
            # engine core's exit as an EngineDeadError on every shutdown.
            handler = getattr(llm, "output_handler", None)
            if handler is not None:
                handler.cancel()
            # Stops the engine-core processes (~5 s); blocking, so off the event loop.
            await asyncio.to_thread(llm.shutdown)

    def _require_started(self) -> AsyncLLM:
        if self._llm is None:
            raise Unavailable("the vllm engine is not started" if not self._closed else "the vllm engine is closed")
        return self._llm

    async def _render(self, llm: AsyncLLM, request: GenerationRequest) -> Any:
        """Prompt text or chat messages -> vLLM's tokenized engine input."""
        renderer = llm.renderer
        try:
            if request.prompt is not None:
                (engine_input,) = await renderer.render_cmpl_async([{"prompt": request.prompt}])
            else:
                from vllm.renderers.params import ChatParams

                messages: list[Any] = [
                    {"role": t.role, "content": t.content, **({"name": t.name} if t.name else {})}
                    for t in request.messages
                ]
                # The chat template writes the special tokens itself.
                tokenize = renderer.default_chat_tok_params.with_kwargs(add_special_tokens=False)
                _, (engine_input,) = await renderer.render_chat_async(
                    [messages], ChatParams(chat_template_kwargs={"add_generation_prompt": True}), tokenize
                )
        except HeadraceError:
            raise
        except Exception as exc:
            raise _map_error(exc) from exc
        return engine_input


def sampling_params(
    sampling: Sampling,
    *,
    prompt_len: int,
    max_model_len: int,
    default_max_tokens: int,
    model_defaults: dict[str, Any] | None = None,
    final_only: bool = False,
) -> SamplingParams:
    """Our Sampling -> vLLM's SamplingParams (streaming deltas; final_only:
    one output, the whole answer, when the sequence ends). Unset fields
    take the model's defaults (its generation_config.json), then vLLM's; a
    request without max_tokens gets default_max_tokens, cut to the context
    left after the prompt."""
    from vllm import SamplingParams
    from vllm.exceptions import VLLMClientError
    from vllm.sampling_params import RequestOutputKind

    values: dict[str, Any] = dict(model_defaults or {})
    explicit = {
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "top_k": sampling.top_k,
        "seed": sampling.seed,
        "presence_penalty": sampling.presence_penalty,
        "frequency_penalty": sampling.frequency_penalty,
        "repetition_penalty": sampling.repetition_penalty,
        "min_tokens": sampling.min_tokens,
    }
    values.update({k: v for k, v in explicit.items() if v is not None})
    room = max_model_len - prompt_len
    if sampling.max_tokens is not None:
        if sampling.max_tokens > room:
            raise InvalidArgument(
                f"max_tokens: {sampling.max_tokens} does not fit: the prompt has {prompt_len} tokens "
                f"and the context is {max_model_len}"
            )
        values["max_tokens"] = sampling.max_tokens
    else:
        if room < 1:
            raise InvalidArgument(f"prompt: {prompt_len} tokens leave no room in the {max_model_len}-token context")
        values["max_tokens"] = min(int(values.get("max_tokens", default_max_tokens)), room)
    if sampling.stop:
        values["stop"] = list(sampling.stop)
    values["ignore_eos"] = sampling.ignore_eos
    try:
        kind = RequestOutputKind.FINAL_ONLY if final_only else RequestOutputKind.DELTA
        return SamplingParams(output_kind=kind, **values)
    except (VLLMClientError, ValueError) as exc:
        # SamplingParams checks ranges (temperature < 0, top_p > 1, ...).
        raise InvalidArgument(f"sampling: {exc}") from exc


def _map_error(exc: Exception) -> HeadraceError:
    from vllm.exceptions import VLLMClientError
    from vllm.v1.engine.exceptions import EngineDeadError

    if isinstance(exc, VLLMClientError):
        return InvalidArgument(str(exc))
    if isinstance(exc, EngineDeadError):
        return Unavailable(f"the vLLM engine died: {exc}")
    return Internal(f"vLLM failed: {type(exc).__name__}: {exc}")


def engine_args(settings: VllmEngineSettings, model: str) -> dict[str, Any]:
    """AsyncEngineArgs keyword arguments for the settings."""
    args: dict[str, Any] = {
        "model": model,
        "dtype": settings.dtype,
        "max_model_len": settings.max_model_len,
        "max_num_seqs": settings.max_num_seqs,
        "enable_prefix_caching": settings.enable_prefix_caching,
        "scheduling_policy": settings.scheduling_policy,
        "enforce_eager": settings.enforce_eager,
        "seed": settings.seed,
        "tensor_parallel_size": settings.tensor_parallel_size,
        "gpu_memory_utilization": settings.gpu_memory_utilization,
        # Our stat logger still gets every step's SchedulerStats.
        "disable_log_stats": not settings.log_stats,
    }
    if settings.max_num_batched_tokens is not None:
        args["max_num_batched_tokens"] = settings.max_num_batched_tokens
    if Path(model).is_dir():
        # A local folder: never ask a hub for anything.
        args["tokenizer"] = model
    return args


def engine_environment(settings: VllmEngineSettings) -> dict[str, str]:
    """The VLLM_* variables the engine core reads on a CPU host."""
    bind = settings.cpu_threads_bind
    if bind is None:
        bind = cpu_list(sorted(os.sched_getaffinity(0)))
    return {
        "VLLM_CPU_KVCACHE_SPACE": str(settings.cpu_kv_cache_gib),
        "VLLM_CPU_OMP_THREADS_BIND": bind,
        "VLLM_USE_AOT_COMPILE": "1" if settings.cpu_aot_compile else "0",
    }


def _set_engine_environment(settings: VllmEngineSettings, *, cpu: bool) -> None:
    """Set the engine's variables in this process before AsyncLLM spawns the
    engine core, which inherits them (on a CPU host only: a GPU host keeps
    vLLM's own defaults). A local model folder also means no hub."""
    for key, value in (engine_environment(settings) if cpu else {}).items():
        previous = os.environ.get(key)
        if previous is not None and previous != value:
            log.info("vllm engine settings override %s=%s with %s", key, previous, value)
        os.environ[key] = value
    if settings.model is None or Path(settings.model).is_dir():
        os.environ.setdefault("HF_HUB_OFFLINE", "1")


def cpu_list(cpus: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2,5"."""
    ranges: list[str] = []
    start = prev = cpus[0]
    for cpu in [*cpus[1:], -1]:
        if cpu == prev + 1:
            prev = cpu
            continue
        ranges.append(f"{start}-{prev}" if prev > start else str(start))
        start = prev = cpu
    return ",".join(ranges)
