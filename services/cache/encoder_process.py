"""The embedding model in a process of its own.

Why: in the cache's process the model's thread needs the GIL between torch
operations, and the event loop (gRPC, Redis, the verifier) holds it the
rest of the time. Measured on this 2-core host: a batch of 32 embedded 2.7x
slower beside a busy Python thread (6 batches in 2 s instead of 16), while
that thread lost only 3%. Under a burst the event loop is busiest exactly
when the model must be fastest, so lookups timed out. In a child process
the model has its own interpreter: the two share only the CPU.

`ProcessEncoder` is a TextEncoder: `encode` (called from the batching
embedder's one thread) sends the texts down a pipe and waits, without the
GIL, for the vectors. `fits` counts tokens in this process with the model's
own tokenizer file, so it never waits behind a batch. A child that dies
fails the batch it had (its lookups answer an error, its stores are not
kept) and the next batch starts a new one.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from services.cache.embedder import MiniLmEncoder, Vectors

log = logging.getLogger(__name__)

__all__ = ["ProcessEncoder"]

# Loading the model takes seconds (torch's import alone), on a busy host more.
_START_TIMEOUT_S = 300.0


def _serve(conn: Connection, model_path: str | None, threads: int, nice: int) -> None:
    """The child: load the model, then embed what comes until None or EOF."""
    if nice:
        # Below the event loops: see ProcessEncoder.
        os.nice(nice)
    try:
        encoder = MiniLmEncoder(model_path, threads=threads)
    except Exception as exc:  # reported to the parent, which raises it
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", encoder.model_id, encoder.dimension, encoder.max_tokens, encoder.model_path))
    while True:
        try:
            texts = conn.recv()
        except EOFError:
            return
        if texts is None:
            return
        try:
            conn.send(("ok", encoder.encode(texts)))
        except Exception as exc:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


class ProcessEncoder:
    """all-MiniLM-L6-v2 (MiniLmEncoder) in a child process; see the module.

    `nice`: how much lower the child's CPU priority is than its parent's.
    The model is throughput work behind a bounded queue (a lookup it cannot
    serve in time answers miss at once); the event loops of the cache and
    the router are latency work: a lookup that waits for a loop to be
    scheduled is the one that times out. Measured under bursts of 32
    through the router on 2 shared cores: lookups reached the cache's
    handler with up to the whole 250 ms gone (p90 136 ms) while the model
    held a core (docs/cache.md)."""

    def __init__(self, model_path: str | None = None, *, threads: int = 1, nice: int = 0) -> None:
        self._model_path = model_path
        self._threads = threads
        self._nice = nice
        # encode runs on one thread at a time (TextEncoder's contract); the
        # lock also covers a restart after the child died.
        self._lock = threading.Lock()
        self._conn: Connection | None = None
        self._process: Any = None
        model_id, dimension, max_tokens, resolved_path = self._start()
        self._model_id, self._dimension, self._max_tokens = model_id, dimension, max_tokens
        from tokenizers import Tokenizer

        self._counter: Any = Tokenizer.from_file(str(Path(resolved_path) / "tokenizer.json"))
        self._counter.no_truncation()
        self._counter.no_padding()

    def _start(self) -> tuple[str, int, int, str]:
        # spawn: a fork of a process with gRPC and Redis threads is unsafe.
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        process = context.Process(
            target=_serve, args=(child, self._model_path, self._threads, self._nice), name="embedder", daemon=True
        )
        started = time.monotonic()
        process.start()
        child.close()
        if not parent.poll(_START_TIMEOUT_S):
            process.kill()
            raise RuntimeError(f"the embedding process did not load the model in {_START_TIMEOUT_S:.0f} s")
        try:
            reply = parent.recv()
        except EOFError:
            raise RuntimeError(f"the embedding process exited (code {process.exitcode}) loading the model") from None
        if reply[0] != "ready":
            process.join(5)
            raise RuntimeError(f"the embedding process could not load the model: {reply[1]}")
        self._conn, self._process = parent, process
        log.info("embedding process %d ready in %.1fs", process.pid, time.monotonic() - started)
        return str(reply[1]), int(reply[2]), int(reply[3]), str(reply[4])

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def dimension(self) -> int:
        return self._dimension

    @property
    def pid(self) -> int | None:
        return int(self._process.pid) if self._process is not None else None

    def fits(self, text: str) -> bool:
        if len(text) > self._max_tokens * 16:
            return False
        tokens: list[int] = self._counter.encode(text, add_special_tokens=True).ids
        return len(tokens) <= self._max_tokens

    def encode(self, texts: list[str]) -> Vectors:
        with self._lock:
            if self._conn is None or not self._process.is_alive():
                log.warning("the embedding process is gone (exit code %s): starting another", self._exit_code())
                self._start()
            assert self._conn is not None
            try:
                self._conn.send(list(texts))
                reply = self._conn.recv()
            except (EOFError, OSError, BrokenPipeError) as exc:
                code = self._exit_code()
                self._conn = None
                raise RuntimeError(f"the embedding process died ({len(texts)} texts, exit code {code})") from exc
        if reply[0] != "ok":
            raise RuntimeError(f"embedding {len(texts)} texts failed in the embedding process: {reply[1]}")
        return np.asarray(reply[1], dtype=np.float32)

    def _exit_code(self) -> int | None:
        if self._process is None:
            return None
        self._process.join(0.1)
        return int(self._process.exitcode) if self._process.exitcode is not None else None

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.send(None)
                except (OSError, BrokenPipeError):
                    pass
                self._conn.close()
                self._conn = None
            if self._process is not None:
                self._process.join(5)
                if self._process.is_alive():
                    self._process.kill()
                    self._process.join(5)
