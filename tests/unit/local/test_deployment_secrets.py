"""What `headrace up` makes for a deployment with API keys, and only then."""

from __future__ import annotations

from pathlib import Path

from headrace.local.deployment_secrets import local_deployment, redacted, url_password, url_with_password
from headrace.runtime.config import Settings, hash_api_key
from headrace.runtime.service_certs import deployment_ready

KEYS = {"acme": {"api_key_sha256": [hash_api_key("k")]}}


def test_open_dev_mode_gets_no_secrets(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path)
    assert local_deployment(settings, create=True) is settings
    assert not list(tmp_path.iterdir())


def test_keys_get_certificates_and_a_redis_password_made_once(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, tenants=KEYS)
    # Before `up`, nothing is made.
    assert local_deployment(settings, create=False).redis_url == settings.redis_url
    first = local_deployment(settings, create=True)
    assert first.internal_tls.certs_dir == tmp_path / "certs" and deployment_ready(tmp_path / "certs")
    password = url_password(first.redis_url)
    assert password and len(password) >= 32
    assert ((tmp_path / "secrets" / "redis-password").stat().st_mode & 0o777) == 0o600
    # `status` later, another process: the same secrets, nothing new.
    again = local_deployment(settings, create=False)
    assert again.redis_url == first.redis_url and again.internal_tls == first.internal_tls


def test_configured_secrets_win(tmp_path: Path) -> None:
    settings = Settings(
        state_dir=tmp_path,
        tenants=KEYS,
        redis_url="redis://app:theirs@127.0.0.1:6379/2",
        internal_tls={"certs_dir": str(tmp_path / "mine")},
    )
    secured = local_deployment(settings, create=True)
    assert secured.redis_url == settings.redis_url and secured.internal_tls.certs_dir == tmp_path / "mine"
    # A remote Redis is the operator's: its URL carries its credentials.
    remote = Settings(state_dir=tmp_path, tenants=KEYS, redis_url="redis://10.0.0.9:6379/0")
    assert local_deployment(remote, create=True).redis_url == remote.redis_url


def test_urls_carry_and_hide_the_password() -> None:
    url = url_with_password("redis://127.0.0.1:6390/0", "p@ss/word")
    assert url_password(url) == "p@ss/word"
    assert url_with_password("redis://app@localhost/1", "x") == "redis://app:x@localhost/1"
    assert redacted(url) == "redis://:***@127.0.0.1:6390/0"
    assert redacted("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
