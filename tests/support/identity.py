"""Service certificates for tests: one deployment CA per test session
(made in well under a second), for meshes with API keys configured."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

from headrace.runtime.config import InternalTlsSettings, Settings
from headrace.runtime.service_certs import init_deployment


@functools.cache
def session_certs_dir() -> Path:
    root = Path(tempfile.mkdtemp(prefix="headrace-certs-"))
    atexit.register(shutil.rmtree, root, True)
    certs = root / "certs"
    init_deployment(certs)
    return certs


def with_service_identity(settings: Settings) -> Settings:
    """What `headrace up` does for a deployment with API keys: the internal
    hops get service certificates, unless the settings name their own."""
    if not settings.auth_enabled or settings.internal_tls.certs_dir is not None:
        return settings
    return settings.model_copy(update={"internal_tls": InternalTlsSettings(certs_dir=session_certs_dir())})
