import pytest

from headrace.runtime.auth import DEV_TENANT, ApiKeyAuthenticator
from headrace.runtime.config import TenantSettings, hash_api_key
from headrace.runtime.errors import Unauthenticated


def test_open_mode_serves_everyone_as_the_dev_tenant() -> None:
    auth = ApiKeyAuthenticator({})
    assert auth.open_mode
    assert auth.authenticate(None) == DEV_TENANT
    assert auth.authenticate("Bearer anything") == DEV_TENANT


def test_keys_map_to_tenants_by_digest() -> None:
    auth = ApiKeyAuthenticator(
        {
            "acme": TenantSettings(api_key_sha256=[hash_api_key("key-a1"), hash_api_key("key-a2")]),
            "globex": TenantSettings(api_key_sha256=[hash_api_key("key-g")]),
        }
    )
    assert auth.authenticate("Bearer key-a1") == "acme"
    assert auth.authenticate("bearer key-a2") == "acme"
    assert auth.authenticate("Bearer key-g") == "globex"


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (None, "missing API key"),
        ("Basic abc", "malformed"),
        ("Bearer", "malformed"),
        ("Bearer wrong", "unknown API key"),
    ],
)
def test_bad_credentials_are_rejected(header: str | None, message: str) -> None:
    auth = ApiKeyAuthenticator({"acme": TenantSettings(api_key_sha256=[hash_api_key("right")])})
    with pytest.raises(Unauthenticated, match=message):
        auth.authenticate(header)


def test_the_configured_digest_is_plain_sha256_hex() -> None:
    # Configs hold these digests: the function that makes them must not drift.
    digest = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert hash_api_key("abc") == digest
    assert ApiKeyAuthenticator({"acme": TenantSettings(api_key_sha256=[digest])}).authenticate("Bearer abc") == "acme"
