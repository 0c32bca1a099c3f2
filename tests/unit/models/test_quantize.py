"""The int8 W8A8 conversion on a tiny Llama-shaped folder (the real model:
tests/integration/test_model_store.py; vLLM serving it:
tests/e2e/router/test_gateway_vllm.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from headrace.models import store as model_store
from headrace.models.quantize import LINEAR_LAYERS, quantize_w8a8
from headrace.runtime.errors import FailedPrecondition


def tiny_folder(path: Path, *, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    tensors = {
        "model.embed_tokens.weight": torch.randn(32, 16, generator=generator).to(torch.bfloat16),
        "model.norm.weight": torch.ones(16, dtype=torch.bfloat16),
        "model.layers.0.input_layernorm.weight": torch.ones(16, dtype=torch.bfloat16),
    }
    for name in LINEAR_LAYERS:
        group = "self_attn" if name.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp"
        # Rows of very different magnitude: one scale per row is what keeps the small ones.
        rows = torch.logspace(-3, 0, 24).unsqueeze(1)
        weight = torch.randn(24, 16, generator=generator) * rows
        tensors[f"model.layers.0.{group}.{name}.weight"] = weight.to(torch.bfloat16)
    path.mkdir()
    save_file(tensors, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps({"model_type": "llama", "dtype": "bfloat16"}))
    (path / "tokenizer.json").write_text('{"tokenizer": true}')
    (path / "chat_template.jinja").write_text("{{ messages }}")
    (path / model_store.MANIFEST_NAME).write_text("{}")
    return tensors


def test_linear_weights_become_int8_with_a_scale_per_output_channel(tmp_path: Path) -> None:
    source = tmp_path / "bf16"
    original = tiny_folder(source)
    out = tmp_path / "w8a8"
    out.mkdir()
    folder = quantize_w8a8(source, out)
    assert folder.quantized_layers == len(LINEAR_LAYERS)
    tensors = load_file(str(out / "model.safetensors"))
    for name, weight in original.items():
        base = name.removesuffix(".weight")
        if base.rsplit(".", 1)[-1] in LINEAR_LAYERS:
            q, scale = tensors[name], tensors[f"{base}.weight_scale"]
            assert q.dtype == torch.int8 and q.shape == weight.shape
            assert scale.dtype == torch.float32 and scale.shape == (weight.shape[0], 1)
            assert int(q.abs().max()) == 127  # each row uses the whole range
            restored = q.to(torch.float32) * scale
            # Each row within half a step of its own scale, the smallest rows included.
            assert torch.all((restored - weight.float()).abs() <= scale / 2 + 1e-6)
        else:
            assert torch.equal(tensors[name], weight), f"{name} changed"
    assert folder.max_relative_error < 0.01


def test_config_says_w8a8_compressed_tensors_and_other_files_are_copied(tmp_path: Path) -> None:
    source = tmp_path / "bf16"
    tiny_folder(source)
    out = tmp_path / "w8a8"
    out.mkdir()
    quantize_w8a8(source, out)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama"
    quant = config["quantization_config"]
    assert quant["quant_method"] == "compressed-tensors" and quant["format"] == "int-quantized"
    assert quant["ignore"] == ["lm_head"]
    (group,) = quant["config_groups"].values()
    assert group["targets"] == ["Linear"]
    assert group["weights"]["num_bits"] == 8 and group["weights"]["strategy"] == "channel"
    assert group["weights"]["symmetric"] and not group["weights"]["dynamic"]
    activations = group["input_activations"]
    assert activations["num_bits"] == 8 and activations["strategy"] == "token" and activations["dynamic"]
    assert (out / "tokenizer.json").read_text() == '{"tokenizer": true}'
    assert (out / "chat_template.jinja").is_file()
    # The source's manifest describes the source, not this folder.
    assert not (out / model_store.MANIFEST_NAME).exists()


def test_the_conversion_is_deterministic(tmp_path: Path) -> None:
    source = tmp_path / "bf16"
    tiny_folder(source)
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        out.mkdir()
        quantize_w8a8(source, out)
    assert model_store.sha256_file(outs[0] / "model.safetensors") == model_store.sha256_file(
        outs[1] / "model.safetensors"
    )


def test_a_folder_that_is_not_a_bf16_model_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(FailedPrecondition, match="not a single-file"):
        quantize_w8a8(tmp_path / "missing", out)
    source = tmp_path / "bf16"
    tiny_folder(source)
    done = tmp_path / "w8a8"
    done.mkdir()
    quantize_w8a8(source, done)
    with pytest.raises(FailedPrecondition, match="already quantized"):
        quantize_w8a8(done, out)


def test_the_w8a8_recipe_shares_the_base_models_source() -> None:
    recipe = model_store.RECIPES["smollm2-w8a8"]
    assert isinstance(recipe, model_store.W8A8Recipe)
    assert recipe.source_sha256 == model_store.RECIPES["smollm2"].source_sha256
    assert "smollm2-w8a8" in model_store.preparable_models()
