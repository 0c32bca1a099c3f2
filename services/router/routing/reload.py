"""Reloading the registry without a restart: HEADRACE_CONFIG is read again
(on a change seen by the file watcher, on SIGHUP, or on the ReloadConfig
RPC), validated whole, and only then swapped in. A config that does not
validate is rejected with a log line naming the field, and the running
config stays.

What reloads: the registry parts (pools' prices and engines as ListModels
shows them, models and versions, aliases, default models, routing).
Everything else (ports, limits, tenants, ...) is read once at start; a
change there is logged as needing a restart.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from headrace.runtime.config import Settings
from headrace.runtime.errors import FailedPrecondition
from services.router.routing import metrics

log = logging.getLogger(__name__)

REGISTRY_FIELDS = ("pools", "models", "aliases", "default_model", "default_embedding_model", "routing")


@dataclass(frozen=True)
class ReloadResult:
    changed: bool
    # SHA-256 of the registry parts now in force.
    digest: str
    # What changed: "models.smollm2", "routing.canaries.smollm2", ...
    changes: tuple[str, ...]


def registry_digest(settings: Settings) -> str:
    parts = {name: _dump(getattr(settings, name)) for name in REGISTRY_FIELDS}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def describe_error(exc: BaseException) -> str:
    """One line naming each bad field, e.g. "routing.canaries.smollm2.steps: ..."."""
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'config'}: {error['msg']}" for error in exc.errors()
        )
    return f"{type(exc).__name__}: {exc}"


class ConfigReloader:
    def __init__(
        self,
        current: Settings,
        *,
        load: Callable[[], Settings],
        apply: Callable[[Settings], None],
        path: Path | None,
    ) -> None:
        self._current = current
        self._load = load
        self._apply = apply
        self._path = path
        self._digest = registry_digest(current)
        self._file_seen = self._file_stamp()

    @property
    def current(self) -> Settings:
        return self._current

    def reload(self, trigger: str) -> ReloadResult:
        """Read, validate and apply the config. Raises FailedPrecondition
        (after logging it) when the new config is bad; the old one stays."""
        try:
            loaded = self._load()
        except (ValidationError, ValueError, OSError, yaml.YAMLError) as exc:
            metrics.CONFIG_RELOADS.labels(outcome="rejected").inc()
            message = f"config reload ({trigger}) rejected, keeping the running config: {describe_error(exc)}"
            log.error("%s", message)
            raise FailedPrecondition(message) from exc
        changes = tuple(_registry_changes(self._current, loaded))
        restart = _restart_only_changes(self._current, loaded)
        if restart:
            log.warning("config reload (%s): %s changed; that takes a restart", trigger, ", ".join(restart))
        digest = registry_digest(loaded)
        if digest == self._digest:
            metrics.CONFIG_RELOADS.labels(outcome="unchanged").inc()
            log.info("config reload (%s): registry unchanged", trigger)
            return ReloadResult(changed=False, digest=digest, changes=())
        merged = self._current.model_copy(update={name: getattr(loaded, name) for name in REGISTRY_FIELDS})
        self._apply(merged)
        self._current = merged
        self._digest = digest
        metrics.CONFIG_RELOADS.labels(outcome="applied").inc()
        log.info("config reload (%s) applied: %s", trigger, ", ".join(changes) or "no visible change")
        return ReloadResult(changed=True, digest=digest, changes=changes)

    async def watch(self, interval_s: float) -> None:
        """Poll the config file; reload when its content changes."""
        if self._path is None:
            return
        while True:
            await asyncio.sleep(interval_s)
            stamp = await asyncio.to_thread(self._file_stamp)
            if stamp is None or stamp == self._file_seen:
                continue
            self._file_seen = stamp
            try:
                self.reload(f"{self._path} changed")
            except FailedPrecondition:
                # Logged; the next change to the file tries again.
                continue

    def _file_stamp(self) -> str | None:
        # The content, not the mtime: two writes within one timestamp tick
        # must not look alike. The file is small and read every few seconds.
        if self._path is None:
            return None
        try:
            return hashlib.sha256(self._path.read_bytes()).hexdigest()
        except OSError:
            return None


def _dump(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {key: _dump(item) for key, item in value.items()}
    return value


def _registry_changes(old: Settings, new: Settings) -> list[str]:
    changes: list[str] = []
    for name in REGISTRY_FIELDS:
        before, after = _dump(getattr(old, name)), _dump(getattr(new, name))
        if before == after:
            continue
        if isinstance(before, dict) and isinstance(after, dict):
            for key in sorted(set(before) | set(after)):
                if before.get(key) != after.get(key):
                    changes.append(f"{name}.{key}")
        else:
            changes.append(name)
    return changes


def _restart_only_changes(old: Settings, new: Settings) -> list[str]:
    ignored = {*REGISTRY_FIELDS, "engine_override"}
    return [
        name
        for name in type(old).model_fields
        if name not in ignored and _dump(getattr(old, name)) != _dump(getattr(new, name))
    ]
