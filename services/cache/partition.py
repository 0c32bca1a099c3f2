"""Partitions (tenant x model version) and the Redis keys the cache uses.

Partitions are hard walls. Every key that holds one tenant's data is named
by a SHA-256 of an unambiguous encoding (a JSON list) of the tenant and
whatever else it belongs to, never by the raw strings: a tenant id holding
separators, unicode look-alikes or nothing at all cannot name another
tenant's key. Entries also record their tenant and version, and every read
checks both again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property

from headrace.runtime.errors import InvalidArgument

PREFIX = "hr:cache:v1"
# Bounds on the ids a partition is made of (they end up hashed, but an
# unbounded string is still unbounded work).
MAX_ID_CHARS = 256


def digest(*parts: str) -> str:
    """SHA-256 of the parts as a JSON list: ("a:b", "c") and ("a", "b:c") differ."""
    encoded = json.dumps(list(parts), ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(encoded.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class Partition:
    tenant: str
    model_version: str

    @cached_property
    def id(self) -> str:
        return digest("partition", self.tenant, self.model_version)

    @property
    def model(self) -> str:
        return self.model_version.split("@", 1)[0]

    def to_json(self) -> str:
        return json.dumps([self.tenant, self.model_version], ensure_ascii=False)

    @classmethod
    def from_json(cls, raw: str | bytes) -> Partition:
        tenant, model_version = json.loads(raw)
        return cls(str(tenant), str(model_version))


def require_tenant(tenant: str) -> None:
    if not tenant:
        raise InvalidArgument("tenant: required (entries are partitioned by tenant)")
    if len(tenant) > MAX_ID_CHARS:
        raise InvalidArgument(f"tenant: longer than {MAX_ID_CHARS} characters")


def partition_of(tenant: str, model_version: str) -> Partition:
    require_tenant(tenant)
    name, at, version = model_version.partition("@")
    if not at or not name or not version:
        raise InvalidArgument("model_version: required, as name@version")
    if len(model_version) > MAX_ID_CHARS:
        raise InvalidArgument(f"model_version: longer than {MAX_ID_CHARS} characters")
    return Partition(tenant, model_version)


# Redis keys. Entry ids are hex digests already (request_key.exact_key).


def entry_key(entry_id: str) -> str:
    return f"{PREFIX}:entry:{entry_id}"


ENTRY_KEY_PREFIX = f"{PREFIX}:entry:"
# Every partition that has (had) entries: partition id -> [tenant, version].
PARTITIONS_KEY = f"{PREFIX}:partitions"


def tenant_partitions_key(tenant: str) -> str:
    return f"{PREFIX}:tenant:{digest('tenant', tenant)}:partitions"


def expiry_key(partition: Partition) -> str:
    """Sorted set: every entry of the partition, scored by when it expires."""
    return f"{PREFIX}:part:{partition.id}:expiry"


def log_key(partition: Partition) -> str:
    """Sorted set: the partition's semantic entries, scored by a sequence
    number in commit order, so a replica can fetch what it has not seen."""
    return f"{PREFIX}:part:{partition.id}:log"


def seq_key(partition: Partition) -> str:
    return f"{PREFIX}:part:{partition.id}:seq"


def tag_key(tenant: str, tag: str) -> str:
    """Sorted set: the tenant's entries carrying the tag, scored by expiry."""
    return f"{PREFIX}:tag:{digest('tag', tenant, tag)}"


def embedding_key(tenant: str, model_id: str, text: str) -> str:
    # Per tenant: a shared embedding cache would let one tenant learn, from
    # how fast a lookup answers, whether another sent the same text.
    return f"{PREFIX}:emb:{digest('embedding', tenant, model_id, text)}"


def watermark_key(tenant: str, kind: str, value: str = "") -> str:
    """When the tenant last invalidated by (kind, value)."""
    return f"{PREFIX}:inv:{digest('invalidated', tenant, kind, value)}"
