import pytest

from headrace.runtime.errors import InvalidArgument
from services.cache.partition import (
    Partition,
    digest,
    embedding_key,
    partition_of,
    tag_key,
    tenant_partitions_key,
    watermark_key,
)

# Tenant ids built to collide under naive key building: separators,
# look-alikes, normalization forms, padding, control characters.
CRAFTED = ["a:b", "a", "a:", ":a", "a\x00", "acme", "\u0430cme", "acme ", "Acme", "caf\u00e9", "cafe\u0301", "x" * 256]


def test_digest_is_unambiguous_where_concatenation_is_not() -> None:
    assert digest("a:b", "c") != digest("a", "b:c")
    assert digest("a", "") != digest("a")
    assert digest("", "a") != digest("a", "")


def test_crafted_tenants_get_distinct_partitions_and_keys() -> None:
    partitions = {Partition(t, "m@1").id for t in CRAFTED}
    assert len(partitions) == len(CRAFTED)
    for make in (tenant_partitions_key, lambda t: tag_key(t, "doc"), lambda t: watermark_key(t, "all")):
        assert len({make(t) for t in CRAFTED}) == len(CRAFTED)
    assert len({embedding_key(t, "model", "same text") for t in CRAFTED}) == len(CRAFTED)


def test_separator_in_tenant_cannot_reach_another_version() -> None:
    assert Partition("a@b", "m@1").id != Partition("a", "b@m@1").id
    assert Partition("t", "m@1").id != Partition("t", "m@1 ").id != Partition("t", "m@01").id


@pytest.mark.parametrize(
    ("tenant", "version", "message"),
    [
        ("", "m@1", "tenant: required"),
        ("t" * 257, "m@1", "tenant: longer than"),
        ("t", "", "model_version: required"),
        ("t", "m", "model_version: required"),
        ("t", "@1", "model_version: required"),
        ("t", "m@", "model_version: required"),
    ],
)
def test_bad_partitions_are_refused_naming_the_field(tenant: str, version: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        partition_of(tenant, version)


def test_partition_round_trips_and_knows_its_model() -> None:
    partition = partition_of("caf\u00e9", "smollm2@1")
    assert Partition.from_json(partition.to_json()) == partition
    assert partition.model == "smollm2"
