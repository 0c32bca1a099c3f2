"""API keys to tenants, checked in one place for gRPC (an interceptor) and
HTTP (middleware). Keys are configured as SHA-256 digests; the keys
themselves are never stored."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Protocol

from headrace.runtime.config import TenantSettings, hash_api_key
from headrace.runtime.errors import Unauthenticated

AUTHORIZATION_KEY: Final = "authorization"
# The tenant of every request in open dev mode (no keys configured).
DEV_TENANT: Final = "default"


class Authenticator(Protocol):
    def authenticate(self, authorization: str | None) -> str:
        """The tenant an `authorization` value belongs to; raises Unauthenticated."""
        ...


class ApiKeyAuthenticator:
    """Bearer API keys. With no keys configured it is in open dev mode: every
    request is the dev tenant (and config refuses non-loopback binds)."""

    def __init__(self, tenants: Mapping[str, TenantSettings]) -> None:
        self._tenant_by_digest: dict[str, str] = {
            digest: name for name, tenant in tenants.items() for digest in tenant.api_key_sha256
        }

    @property
    def open_mode(self) -> bool:
        return not self._tenant_by_digest

    def authenticate(self, authorization: str | None) -> str:
        if self.open_mode:
            return DEV_TENANT
        if not authorization:
            raise Unauthenticated("missing API key: send 'authorization: Bearer <key>'")
        scheme, _, key = authorization.strip().partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise Unauthenticated("malformed authorization: expected 'Bearer <key>'")
        tenant = self._tenant_by_digest.get(hash_api_key(key))
        if tenant is None:
            raise Unauthenticated("unknown API key")
        return tenant
