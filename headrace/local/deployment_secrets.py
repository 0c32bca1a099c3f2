"""The secrets of a local deployment with API keys, made by `headrace up`
so it needs no manual step: service certificates (a CA of its own) and a
Redis password, kept in the state directory (outside any repository),
readable by this user only. Open dev mode (no keys) gets neither.

    <state_dir>/certs/              ca.crt, ca.key, <role>.crt/.key
    <state_dir>/secrets/redis-password
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Final
from urllib.parse import quote, unquote, urlparse, urlunparse

from headrace.runtime.config import InternalTlsSettings, Settings
from headrace.runtime.service_certs import (
    CA_CERT,
    CA_KEY,
    LOCAL_HOSTS,
    Role,
    cert_path,
    init_deployment,
    issue,
    key_path,
)

CERTS_DIR: Final = "certs"
SECRETS_DIR: Final = "secrets"
REDIS_PASSWORD_FILE: Final = "redis-password"
_LOOPBACK_HOSTS: Final = ("127.0.0.1", "localhost", "::1")


def redis_password_path(state_dir: Path) -> Path:
    return state_dir / SECRETS_DIR / REDIS_PASSWORD_FILE


def read_redis_password(state_dir: Path) -> str | None:
    try:
        return redis_password_path(state_dir).read_text().strip() or None
    except FileNotFoundError:
        return None


def ensure_redis_password(state_dir: Path) -> str:
    """The deployment's Redis password, made (0600) the first time."""
    existing = read_redis_password(state_dir)
    if existing:
        return existing
    path = redis_password_path(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    password = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(password + "\n")
    return password


def url_password(url: str) -> str | None:
    password = urlparse(url).password
    return unquote(password) if password else None


def url_with_password(url: str, password: str) -> str:
    """`url` authenticating with `password` (as the default user, unless
    the URL names one)."""
    parsed = urlparse(url)
    host = parsed.hostname or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{parsed.username or ''}:{quote(password, safe='')}@{host}"
    if parsed.port:
        netloc += f":{parsed.port}"
    return urlunparse(parsed._replace(netloc=netloc))


def redacted(url: str) -> str:
    """`url` fit for a log or a terminal: the password replaced."""
    parsed = urlparse(url)
    if not parsed.password:
        return url
    return url.replace(f":{parsed.password}@", ":***@", 1)


def is_local_redis(url: str) -> bool:
    return (urlparse(url).hostname or "127.0.0.1") in _LOOPBACK_HOSTS


def _ensure_certs(certs_dir: Path) -> None:
    """A CA and every role's certificate, made once; roles added later
    (a newer Headrace) are issued from the same CA."""
    if not (certs_dir / CA_CERT).is_file():
        init_deployment(certs_dir)
        return
    if not (certs_dir / CA_KEY).is_file():
        return
    for role in Role:
        if not (cert_path(certs_dir, role).is_file() and key_path(certs_dir, role).is_file()):
            issue(certs_dir, role, hosts=list(LOCAL_HOSTS) if role is Role.WORKER else [])


def local_deployment(settings: Settings, *, create: bool, redis_password: bool = True) -> Settings:
    """`settings` with the local deployment's secrets filled in where the
    configuration names none: internal_tls.certs_dir, and the Redis password
    in redis_url (a local Redis only). `create`: make what is missing
    (`headrace up`); else use what exists (`status`, `down`).
    `redis_password`: False when a Redis without a password already answers
    at the URL (the user's own): then the URL stays as configured."""
    if not settings.auth_enabled:
        return settings
    update: dict[str, object] = {}
    if settings.internal_tls.certs_dir is None:
        certs_dir = Path(settings.state_dir) / CERTS_DIR
        if create:
            _ensure_certs(certs_dir)
        update["internal_tls"] = InternalTlsSettings(certs_dir=certs_dir)
    url = settings.redis_url
    if redis_password and url_password(url) is None and is_local_redis(url):
        state_dir = Path(settings.state_dir)
        password = ensure_redis_password(state_dir) if create else read_redis_password(state_dir)
        if password:
            update["redis_url"] = url_with_password(url, password)
    return settings.model_copy(update=update) if update else settings
