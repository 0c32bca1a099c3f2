"""The in-memory vector index of one partition (tenant x model version).

Within a partition, entries are grouped by context scope (semantic_key):
a lookup only ever compares vectors of the same exact context, so every
group is an index of its own. A group starts as an exact search over a
matrix (a conversation's context usually holds one or a few entries) and
moves to an HNSW graph (hnswlib) once it holds more than flat_max entries.
Everything here is rebuilt from Redis; nothing here is the truth.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import hnswlib
import numpy as np

from services.cache.embedder import Vectors


@dataclass(frozen=True)
class Match:
    entry_id: str
    similarity: float


@dataclass(frozen=True)
class HnswParams:
    m: int = 16
    ef_construction: int = 200
    ef_search: int = 64


class VectorIndex(Protocol):
    def __len__(self) -> int: ...

    def add(self, entry_id: str, vector: Vectors) -> None: ...

    def remove(self, entry_id: str) -> None: ...

    def search(self, vector: Vectors, k: int) -> list[Match]: ...

    def vectors(self) -> dict[str, Vectors]: ...


class FlatIndex:
    """Exact cosine search over unit vectors."""

    def __init__(self, dimension: int) -> None:
        self._dimension = dimension
        self._ids: list[str] = []
        self._row: dict[str, int] = {}
        self._matrix = np.zeros((0, dimension), dtype=np.float32)

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, entry_id: str, vector: Vectors) -> None:
        row = self._row.get(entry_id)
        if row is not None:
            self._matrix[row] = vector
            return
        self._row[entry_id] = len(self._ids)
        self._ids.append(entry_id)
        self._matrix = np.vstack([self._matrix, vector.reshape(1, self._dimension)])

    def remove(self, entry_id: str) -> None:
        row = self._row.pop(entry_id, None)
        if row is None:
            return
        last = len(self._ids) - 1
        if row != last:
            # Move the last row into the hole.
            moved = self._ids[last]
            self._ids[row] = moved
            self._row[moved] = row
            self._matrix[row] = self._matrix[last]
        self._ids.pop()
        self._matrix = self._matrix[:last]

    def search(self, vector: Vectors, k: int) -> list[Match]:
        if not self._ids:
            return []
        scores = self._matrix @ vector.reshape(self._dimension)
        top = np.argsort(-scores)[:k]
        return [Match(self._ids[i], float(scores[i])) for i in top]

    def vectors(self) -> dict[str, Vectors]:
        return {entry_id: self._matrix[row] for entry_id, row in self._row.items()}


class HnswIndex:
    """Approximate cosine search (hnswlib); removed labels are reused."""

    def __init__(self, dimension: int, params: HnswParams, capacity: int = 1024) -> None:
        self._dimension = dimension
        self._index = hnswlib.Index(space="cosine", dim=dimension)
        self._index.init_index(
            max_elements=capacity, ef_construction=params.ef_construction, M=params.m, allow_replace_deleted=True
        )
        self._index.set_ef(params.ef_search)
        self._index.set_num_threads(1)
        self._label: dict[str, int] = {}
        self._id: dict[int, str] = {}
        self._free: list[int] = []
        self._next = 0

    def __len__(self) -> int:
        return len(self._label)

    def add(self, entry_id: str, vector: Vectors) -> None:
        label = self._label.get(entry_id)
        data = vector.reshape(1, self._dimension)
        if label is not None:
            self._index.add_items(data, [label])
            return
        if self._free:
            label = self._free.pop()
            self._index.add_items(data, [label], replace_deleted=True)
        else:
            if self._index.get_current_count() >= self._index.get_max_elements():
                self._index.resize_index(self._index.get_max_elements() * 2)
            label = self._next
            self._next += 1
            self._index.add_items(data, [label])
        self._label[entry_id] = label
        self._id[label] = entry_id

    def remove(self, entry_id: str) -> None:
        label = self._label.pop(entry_id, None)
        if label is None:
            return
        del self._id[label]
        self._index.mark_deleted(label)
        self._free.append(label)

    def search(self, vector: Vectors, k: int) -> list[Match]:
        k = min(k, len(self._label))
        if k == 0:
            return []
        labels, distances = self._index.knn_query(vector.reshape(1, self._dimension), k=k)
        return [
            Match(self._id[int(label)], 1.0 - float(distance))
            for label, distance in zip(labels[0], distances[0], strict=True)
            if int(label) in self._id
        ]

    def vectors(self) -> dict[str, Vectors]:
        return {
            entry_id: np.asarray(self._index.get_items([label])[0], dtype=np.float32)
            for entry_id, label in self._label.items()
        }


class PartitionIndex:
    """One partition's entries, grouped by context scope, with their expiry."""

    def __init__(self, dimension: int, *, flat_max: int, hnsw: HnswParams) -> None:
        self._dimension = dimension
        self._flat_max = flat_max
        self._hnsw = hnsw
        self._groups: dict[str, VectorIndex] = {}
        self._scope: dict[str, str] = {}
        self.expires_at: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._scope)

    def __contains__(self, entry_id: object) -> bool:
        return entry_id in self._scope

    def entry_ids(self) -> set[str]:
        return set(self._scope)

    def group_kind(self, scope: str) -> str:
        group = self._groups.get(scope)
        return "" if group is None else type(group).__name__

    def add(self, entry_id: str, scope: str, vector: Vectors, expires_at: float) -> None:
        previous = self._scope.get(entry_id)
        if previous is not None and previous != scope:
            self.remove(entry_id)
        group = self._groups.get(scope)
        if group is None:
            group = self._groups[scope] = FlatIndex(self._dimension)
        group.add(entry_id, vector)
        if isinstance(group, FlatIndex) and len(group) > self._flat_max:
            self._groups[scope] = self._to_hnsw(group)
        self._scope[entry_id] = scope
        self.expires_at[entry_id] = expires_at

    def _to_hnsw(self, flat: FlatIndex) -> HnswIndex:
        vectors = flat.vectors()
        graph = HnswIndex(self._dimension, self._hnsw, capacity=max(1024, 2 * len(vectors)))
        for entry_id, vector in vectors.items():
            graph.add(entry_id, vector)
        return graph

    def remove(self, entry_id: str) -> None:
        scope = self._scope.pop(entry_id, None)
        self.expires_at.pop(entry_id, None)
        if scope is None:
            return
        group = self._groups[scope]
        group.remove(entry_id)
        if len(group) == 0:
            del self._groups[scope]

    def search(self, scope: str, vector: Vectors, k: int, *, now: float) -> list[Match]:
        """The k nearest live entries of the same context, nearest first.
        Entries past their expiry leave the index as they are met."""
        group = self._groups.get(scope)
        if group is None:
            return []
        matches = group.search(vector, k)
        expired = [m.entry_id for m in matches if self.expires_at.get(m.entry_id, 0.0) <= now]
        for entry_id in expired:
            self.remove(entry_id)
        return [m for m in matches if m.entry_id not in expired]

    def expired(self, now: float) -> list[str]:
        return [entry_id for entry_id, at in self.expires_at.items() if at <= now]
