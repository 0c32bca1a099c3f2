"""Cache-Control request header -> CachePolicy."""

from __future__ import annotations

import pytest

from headrace.runtime.errors import InvalidArgument
from services.router.gateway.cache_control import cache_policy_from_header


@pytest.mark.parametrize(
    ("header", "no_cache", "no_store", "max_age"),
    [
        (None, False, False, None),
        ("", False, False, None),
        ("no-cache", True, False, None),
        ("No-Store", False, True, None),
        ("no-cache, no-store", True, True, None),
        ("max-age=60", False, False, 60),
        ('max-age="30", no-store', False, True, 30),
        ("max-age=0", False, False, 0),
        ("max-age=99999999999", False, False, 2**32 - 1),
        ("private, must-revalidate", False, False, None),
    ],
)
def test_directives(header: str | None, no_cache: bool, no_store: bool, max_age: int | None) -> None:
    policy = cache_policy_from_header(header)
    assert (policy.no_cache, policy.no_store) == (no_cache, no_store)
    assert (policy.max_age_s if policy.HasField("max_age_s") else None) == max_age


@pytest.mark.parametrize("header", ["max-age=soon", "max-age=-1", "max-age=", "max-age=1.5"])
def test_a_malformed_max_age_is_a_clear_error(header: str) -> None:
    with pytest.raises(InvalidArgument, match="Cache-Control: max-age must be a whole number"):
        cache_policy_from_header(header)
