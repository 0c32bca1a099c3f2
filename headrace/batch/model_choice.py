"""Which model version and pool a batch job runs on.

A job runs on one model version, chosen at submit time: aliases and bare
names resolve to a version then, and every row of the job runs on it, so a
long job is not split across versions when the default changes midway.
Routing policies (A/B arms, canaries) are for online traffic and do not
apply. The rules match the router's model registry: alias -> name[@version],
a bare name -> its default version, removed versions are refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from headrace.runtime.config import Settings
from headrace.runtime.errors import InvalidArgument, NotFound

Task = Literal["generate", "embed"]


@dataclass(frozen=True)
class BatchModel:
    # "name@version"
    model_version: str
    pool: str


def resolve_batch_model(settings: Settings, requested: str, *, task: Task) -> BatchModel:
    name = requested or (settings.default_model if task == "generate" else settings.default_embedding_model)
    if not name:
        raise InvalidArgument(f"body.model: required (no default {task} model is configured)")
    target = settings.aliases.get(name, name)
    base, _, version = target.partition("@")
    model = settings.models.get(base)
    if model is None:
        known = sorted([*settings.models, *settings.aliases])
        raise NotFound(f"body.model: unknown model {name!r}; available: {', '.join(known)}")
    if model.task != task:
        kind = "an embedding" if model.task == "embed" else "a generation"
        raise InvalidArgument(f"body.model: {name!r} is {kind} model and cannot serve this endpoint")
    version = version or model.default_version
    spec = model.versions.get(version)
    if spec is None:
        versions = ", ".join(sorted(model.versions))
        raise NotFound(f"body.model: {base!r} has no version {version!r}; versions: {versions}")
    if spec.removed:
        replacement = f"; use {spec.replaced_by}" if spec.replaced_by else ""
        raise NotFound(f"body.model: {base}@{version} has been removed{replacement}")
    return BatchModel(model_version=f"{base}@{version}", pool=spec.pool)
