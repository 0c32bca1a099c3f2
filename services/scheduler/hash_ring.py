"""A consistent-hash ring with bounded loads (Mirrokni, Thorup, Zadimoghaddam,
"Consistent Hashing with Bounded Loads", 2017): a key goes to the first
worker clockwise from its point whose load stays within `factor` times the
average (plus a small absolute slack); a hot key spills to the next worker
instead of swamping one.
Adding or removing a worker moves only the keys next to its points.

Points come from blake2b, not Python's salted hash(): every scheduler
replica must put a key on the same worker."""

from __future__ import annotations

import bisect
import hashlib
import math
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence

from services.scheduler.worker_roster import WorkerState

_VIRTUAL_NODES = 64
_CACHED_RINGS = 16


def stable_hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class HashRing:
    def __init__(self, nodes: Iterable[str], *, virtual_nodes: int = _VIRTUAL_NODES) -> None:
        points = sorted((stable_hash64(f"{node}#{i}"), node) for node in set(nodes) for i in range(virtual_nodes))
        self._hashes = [h for h, _ in points]
        self._nodes = [n for _, n in points]
        self.size = len(set(self._nodes))

    def walk(self, key: int) -> Iterator[str]:
        """Each node once, clockwise from the key's point."""
        if not self._nodes:
            return
        start = bisect.bisect_left(self._hashes, key % (1 << 64))
        seen: set[str] = set()
        count = len(self._nodes)
        for offset in range(count):
            node = self._nodes[(start + offset) % count]
            if node not in seen:
                seen.add(node)
                yield node
                if len(seen) == self.size:
                    return


class RingCache:
    """Rings for the worker sets seen lately (the set changes as workers
    fill up and free again; rebuilding each time would cost more than the
    placement)."""

    def __init__(self, capacity: int = _CACHED_RINGS) -> None:
        self._capacity = capacity
        self._rings: OrderedDict[frozenset[str], HashRing] = OrderedDict()

    def ring(self, nodes: frozenset[str]) -> HashRing:
        ring = self._rings.get(nodes)
        if ring is None:
            ring = HashRing(nodes)
            self._rings[nodes] = ring
            if len(self._rings) > self._capacity:
                self._rings.popitem(last=False)
        else:
            self._rings.move_to_end(nodes)
        return ring


def load_bound(candidates: Sequence[WorkerState], factor: float, slack: int) -> int:
    """Most sequences a worker may hold, the new one included, to stay
    within factor x the average + slack."""
    total = sum(state.outstanding for state in candidates) + 1
    return math.ceil(factor * total / len(candidates)) + slack


def bounded_choice(
    ring: HashRing, key: int, candidates: Sequence[WorkerState], factor: float, slack: int
) -> tuple[WorkerState, bool]:
    """The key's worker under the load bound, and whether it is the key's
    first choice (False: it spilled over to a later one). Some worker is
    always at or below the average, so the walk always ends in a choice."""
    by_id = {state.worker_id: state for state in candidates}
    bound = load_bound(candidates, factor, slack)
    for position, node in enumerate(ring.walk(key)):
        state = by_id.get(node)
        if state is not None and state.outstanding + 1 <= bound:
            return state, position == 0
    return min(candidates, key=lambda s: (s.outstanding, s.worker_id)), False
