"""The model store's bookkeeping, with a tiny recipe standing in for the
real conversion (tests/integration/test_model_store.py runs the real one)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from headrace.models import store as model_store
from headrace.models.store import (
    MANIFEST_NAME,
    list_prepared,
    model_path,
    preparable_models,
    prepare_model,
    verify_model,
)
from headrace.runtime.errors import FailedPrecondition, NotFound


@dataclass
class TinyRecipe:
    source_file: Path
    name: str = "tiny"
    description: str = "a tiny test model"
    builds: int = 0

    @property
    def source_sha256(self) -> str:
        return hashlib.sha256(self.source_file.read_bytes()).hexdigest()

    def locate_source(self) -> tuple[Path, str]:
        return self.source_file, f"test {self.source_file.name}"

    def build(self, source: Path, out: Path, *, progress: bool) -> None:
        self.builds += 1
        (out / "config.json").write_text('{"layers": 1}')
        (out / "sub").mkdir()
        (out / "sub" / "weights.bin").write_bytes(source.read_bytes() * 2)


@pytest.fixture
def recipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> TinyRecipe:
    source = tmp_path / "source.gguf"
    source.write_bytes(b"weights")
    tiny = TinyRecipe(source)
    monkeypatch.setitem(model_store.RECIPES, "tiny", tiny)
    return tiny


def test_smollm2_is_preparable() -> None:
    assert "smollm2" in preparable_models()
    recipe = model_store.RECIPES["smollm2"]
    assert len(recipe.source_sha256) == 64


def test_prepare_builds_once_then_does_nothing(recipe: TinyRecipe, tmp_path: Path) -> None:
    models = tmp_path / "models"
    first = prepare_model("tiny", models, progress=False)
    assert first.created and recipe.builds == 1
    assert first.path == models / "tiny"
    assert set(first.files) == {"config.json", "sub/weights.bin"}
    assert first.files["sub/weights.bin"] == hashlib.sha256(b"weightsweights").hexdigest()
    assert first.source_sha256 == hashlib.sha256(b"weights").hexdigest()
    assert first.size_bytes == len('{"layers": 1}') + len(b"weightsweights")
    second = prepare_model("tiny", models, progress=False)
    assert not second.created and recipe.builds == 1
    assert second.files == first.files
    # Nothing left behind but the folder and the lock.
    assert sorted(p.name for p in models.iterdir()) == [".tiny.lock", "tiny"]


def test_manifest_records_the_source_and_every_file(recipe: TinyRecipe, tmp_path: Path) -> None:
    prepared = prepare_model("tiny", tmp_path, progress=False)
    manifest = json.loads((prepared.path / MANIFEST_NAME).read_text())
    assert manifest["source"] == "test source.gguf"
    assert manifest["files"] == dict(prepared.files)


def test_verify_finds_changed_missing_and_extra_files(recipe: TinyRecipe, tmp_path: Path) -> None:
    prepared = prepare_model("tiny", tmp_path, progress=False)
    assert verify_model("tiny", tmp_path).files == prepared.files
    (prepared.path / "sub" / "weights.bin").write_bytes(b"tampered")
    (prepared.path / "config.json").unlink()
    (prepared.path / "stray.txt").write_text("?")
    with pytest.raises(FailedPrecondition) as failed:
        verify_model("tiny", tmp_path)
    message = str(failed.value)
    assert "sub/weights.bin does not match its checksum" in message
    assert "config.json is missing" in message
    assert "stray.txt is not in the manifest" in message
    with pytest.raises(FailedPrecondition):
        list_prepared(tmp_path, verify=True)


def test_prepare_rebuilds_a_folder_that_fails_verification(recipe: TinyRecipe, tmp_path: Path) -> None:
    prepared = prepare_model("tiny", tmp_path, progress=False)
    (prepared.path / "sub" / "weights.bin").write_bytes(b"tampered")
    again = prepare_model("tiny", tmp_path, progress=False)
    assert again.created and recipe.builds == 2
    verify_model("tiny", tmp_path)


def test_prepare_rebuilds_when_the_source_changed(recipe: TinyRecipe, tmp_path: Path) -> None:
    prepare_model("tiny", tmp_path, progress=False)
    recipe.source_file.write_bytes(b"new weights")
    again = prepare_model("tiny", tmp_path, progress=False)
    assert again.created and again.source_sha256 == hashlib.sha256(b"new weights").hexdigest()


def test_a_source_with_the_wrong_checksum_is_refused(
    recipe: TinyRecipe, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(TinyRecipe, "source_sha256", property(lambda self: "0" * 64))
    with pytest.raises(FailedPrecondition, match="expected 0000"):
        prepare_model("tiny", tmp_path / "models", progress=False)
    assert not (tmp_path / "models" / "tiny").exists()


def test_a_failed_build_leaves_nothing_that_looks_prepared(
    recipe: TinyRecipe, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: TinyRecipe, source: Path, out: Path, *, progress: bool) -> None:
        (out / "half.bin").write_bytes(b"half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(TinyRecipe, "build", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        prepare_model("tiny", tmp_path, progress=False)
    assert list_prepared(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tiny.lock", "source.gguf"]
    with pytest.raises(FailedPrecondition, match="headrace models prepare"):
        model_path("tiny", tmp_path)


def test_model_path_tells_the_user_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition, match="run `headrace models prepare`"):
        model_path("smollm2", tmp_path)


def test_unknown_models_are_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match=r"known: .*smollm2"):
        prepare_model("nonesuch", tmp_path, progress=False)


def test_list_prepared_skips_folders_without_a_manifest(recipe: TinyRecipe, tmp_path: Path) -> None:
    assert list_prepared(tmp_path / "absent") == []
    (tmp_path / "not-a-model").mkdir()
    prepare_model("tiny", tmp_path, progress=False)
    assert [m.name for m in list_prepared(tmp_path)] == ["tiny"]
    assert [m.name for m in list_prepared(tmp_path, verify=True)] == ["tiny"]
