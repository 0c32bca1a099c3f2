"""The HTTP Cache-Control request header, mapped onto a request's CachePolicy:

    no-cache     -> no_cache   (do not answer from the cache)
    no-store     -> no_store   (do not store the answer)
    max-age=N    -> max_age_s  (accept only entries younger than N seconds)

Other directives are ignored, as HTTP says a cache must ignore directives it
does not understand; a malformed max-age is a clear 400.
"""

from __future__ import annotations

from headrace.runtime.errors import InvalidArgument
from headrace.v1 import generation_pb2

HEADER = "cache-control"
_U32_MAX = 2**32 - 1


def cache_policy_from_header(value: str | None) -> generation_pb2.CachePolicy:
    policy = generation_pb2.CachePolicy()
    if not value:
        return policy
    for directive in value.split(","):
        name, _, argument = directive.strip().partition("=")
        name = name.strip().lower()
        if name == "no-cache":
            policy.no_cache = True
        elif name == "no-store":
            policy.no_store = True
        elif name == "max-age":
            policy.max_age_s = _seconds(argument.strip().strip('"'))
    return policy


def _seconds(argument: str) -> int:
    if not (argument.isascii() and argument.isdigit()):
        raise InvalidArgument(f"Cache-Control: max-age must be a whole number of seconds, got {argument!r}")
    # Past the field's range means "any age", as HTTP's delta-seconds overflow rule says.
    return min(int(argument), _U32_MAX)
