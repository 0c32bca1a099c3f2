import numpy as np
import pytest

from services.cache.vector_index import FlatIndex, HnswIndex, HnswParams, PartitionIndex

DIM = 16


def unit(seed: int) -> np.ndarray:
    vector = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def near(vector: np.ndarray, noise: float, seed: int) -> np.ndarray:
    moved = vector + noise * np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    normed: np.ndarray = (moved / np.linalg.norm(moved)).astype(np.float32)
    return normed


@pytest.mark.parametrize("make", [lambda: FlatIndex(DIM), lambda: HnswIndex(DIM, HnswParams(), capacity=4)])
def test_search_add_remove(make: object) -> None:
    index = make()  # type: ignore[operator]
    for i in range(20):  # past the HNSW capacity: it grows
        index.add(f"e{i}", unit(i))
    assert len(index) == 20
    best = index.search(near(unit(7), 0.05, 99), 3)
    assert best[0].entry_id == "e7" and best[0].similarity > 0.9
    assert best[0].similarity >= best[1].similarity >= best[2].similarity
    index.remove("e7")
    index.remove("e7")  # twice is harmless
    assert len(index) == 19
    assert all(m.entry_id != "e7" for m in index.search(unit(7), 19))
    index.add("e7b", unit(7))  # a freed slot is reused
    assert index.search(unit(7), 1)[0].entry_id == "e7b"
    assert index.search(unit(7), 1)[0].similarity == pytest.approx(1.0, abs=1e-5)


def test_a_lookup_only_sees_entries_of_its_own_context() -> None:
    index = PartitionIndex(DIM, flat_max=8, hnsw=HnswParams())
    index.add("mine", "scope-a", unit(1), expires_at=1e12)
    index.add("theirs", "scope-b", unit(1), expires_at=1e12)  # the very same vector
    assert [m.entry_id for m in index.search("scope-a", unit(1), 5, now=0)] == ["mine"]
    assert [m.entry_id for m in index.search("scope-b", unit(1), 5, now=0)] == ["theirs"]
    assert index.search("scope-c", unit(1), 5, now=0) == []


def test_a_large_context_moves_to_hnsw_and_keeps_its_entries() -> None:
    index = PartitionIndex(DIM, flat_max=8, hnsw=HnswParams())
    for i in range(8):
        index.add(f"e{i}", "s", unit(i), expires_at=1e12)
    assert index.group_kind("s") == "FlatIndex"
    index.add("e8", "s", unit(8), expires_at=1e12)
    assert index.group_kind("s") == "HnswIndex"
    for i in range(9):
        assert index.search("s", unit(i), 1, now=0)[0].entry_id == f"e{i}"


def test_expired_entries_are_never_returned_and_leave_the_index() -> None:
    index = PartitionIndex(DIM, flat_max=8, hnsw=HnswParams())
    index.add("old", "s", unit(1), expires_at=100.0)
    index.add("new", "s", near(unit(1), 0.2, 5), expires_at=300.0)
    assert index.expired(now=200.0) == ["old"]
    assert [m.entry_id for m in index.search("s", unit(1), 5, now=200.0)] == ["new"]
    assert "old" not in index and len(index) == 1


def test_an_entry_moving_context_leaves_the_old_one() -> None:
    index = PartitionIndex(DIM, flat_max=8, hnsw=HnswParams())
    index.add("e", "s1", unit(1), expires_at=1e12)
    index.add("e", "s2", unit(1), expires_at=1e12)
    assert index.search("s1", unit(1), 5, now=0) == []
    assert len(index) == 1
