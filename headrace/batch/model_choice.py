"""Which model version and pool a batch job runs on.

A job runs on one model version, chosen at submit time: aliases and bare
names resolve to a version then (by the same registry the router uses,
headrace/models/registry.py), and every row of the job runs on it, so a long
job is not split across versions when the default changes midway. Routing
policies (A/B arms, canaries) are for online traffic and do not apply.
"""

from __future__ import annotations

from dataclasses import dataclass

from headrace.models.registry import ModelRegistry, Task
from headrace.runtime.config import Settings
from headrace.runtime.errors import HeadraceError

__all__ = ["BatchModel", "Task", "resolve_batch_model"]


@dataclass(frozen=True)
class BatchModel:
    # "name@version"
    model_version: str
    pool: str


def resolve_batch_model(settings: Settings, requested: str, *, task: Task) -> BatchModel:
    try:
        resolution = ModelRegistry(settings).resolve(requested, task=task)
    except HeadraceError as exc:
        # The same error, naming the field of the batch line it is about.
        raise type(exc)(f"body.model: {exc.message}", retry_after_s=exc.retry_after_s) from exc
    return BatchModel(model_version=resolution.model_version, pool=resolution.pool)
