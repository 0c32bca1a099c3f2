"""The model registry: what a client's `model` means. Aliases, model names
(their default version) and pinned versions resolve to one model version,
bound to a worker pool with an engine and a price."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from headrace.runtime.config import ModelSettings, Settings
from headrace.runtime.errors import InvalidArgument, NotFound

Task = Literal["generate", "embed"]


@dataclass(frozen=True)
class Resolution:
    # "name@version"
    model_version: str
    pool: str
    engine: str
    price_per_hour: float
    # Why this version: "default", "pinned" or "alias:<name>".
    reason: str
    # Set when the version is deprecated: what to move to.
    deprecation: str = ""


@dataclass(frozen=True)
class RegistryEntry:
    """One name a client can pass, as ListModels shows it."""

    id: str
    resolution: Resolution
    alias: bool
    task: Task
    context_length: int
    created_at: int
    deprecated: bool
    replaced_by: str


class ModelRegistry:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    @property
    def settings(self) -> Settings:
        return self._settings

    def replace(self, settings: Settings) -> None:
        """Serve another (validated) config from now on: a reload. Requests
        already resolved keep what they got."""
        self._settings = settings

    def resolve(self, requested: str, *, task: Task) -> Resolution:
        name = requested or self.default_for(task)
        reason = "default"
        target = name
        if name in self._settings.aliases:
            target = self._settings.aliases[name]
            reason = f"alias:{name}"
        base, _, version = target.partition("@")
        model = self._settings.models.get(base)
        if model is None:
            raise NotFound(f"unknown model {name!r}; available: {', '.join(self.names())}")
        if version:
            if reason == "default":
                reason = "pinned"
        else:
            version = model.default_version
        if model.task != task:
            kind, cannot = ("an embedding", "generate") if model.task == "embed" else ("a generation", "embed")
            raise InvalidArgument(f"model {name!r} is {kind} model and cannot {cannot}")
        return self._resolve_version(base, model, version, reason)

    def default_for(self, task: Task) -> str:
        default = self._settings.default_model if task == "generate" else self._settings.default_embedding_model
        if not default:
            raise InvalidArgument(f"model: required (no default {task} model is configured)")
        return default

    def _resolve_version(self, base: str, model: ModelSettings, version: str, reason: str) -> Resolution:
        spec = model.versions.get(version)
        if spec is None:
            raise NotFound(f"model {base!r} has no version {version!r}; versions: {', '.join(sorted(model.versions))}")
        model_version = f"{base}@{version}"
        if spec.removed:
            replacement = f"; use {spec.replaced_by}" if spec.replaced_by else ""
            raise NotFound(f"model version {model_version} was removed{replacement}")
        deprecation = ""
        if spec.deprecated:
            deprecation = f"{model_version} is deprecated" + (
                f"; move to {spec.replaced_by}" if spec.replaced_by else ""
            )
        pool = self._settings.pools[spec.pool]
        return Resolution(
            model_version=model_version,
            pool=spec.pool,
            engine=self._settings.pool_engine(spec.pool).kind,
            price_per_hour=pool.price_per_hour if spec.price_per_hour is None else spec.price_per_hour,
            reason=reason,
            deprecation=deprecation,
        )

    def names(self) -> list[str]:
        return sorted([*self._settings.models, *self._settings.aliases])

    def entries(self, *, include_deprecated: bool) -> list[RegistryEntry]:
        entries: list[RegistryEntry] = []
        for name, model in sorted(self._settings.models.items()):
            for version, spec in sorted(model.versions.items()):
                if spec.removed or (spec.deprecated and not include_deprecated):
                    continue
                resolution = self._resolve_version(name, model, version, "pinned")
                ids = [f"{name}@{version}"] + ([name] if version == model.default_version else [])
                for model_id in ids:
                    entries.append(
                        RegistryEntry(
                            id=model_id,
                            resolution=resolution,
                            alias=False,
                            task=model.task,
                            context_length=spec.context_length,
                            created_at=spec.created_at,
                            deprecated=spec.deprecated,
                            replaced_by=spec.replaced_by,
                        )
                    )
        for alias in sorted(self._settings.aliases):
            target = self._settings.aliases[alias]
            base = target.partition("@")[0]
            model = self._settings.models[base]
            resolution = self.resolve(alias, task=model.task)
            spec = model.versions[resolution.model_version.partition("@")[2]]
            entries.append(
                RegistryEntry(
                    id=alias,
                    resolution=resolution,
                    alias=True,
                    task=model.task,
                    context_length=spec.context_length,
                    created_at=spec.created_at,
                    deprecated=spec.deprecated,
                    replaced_by=spec.replaced_by,
                )
            )
        return entries
