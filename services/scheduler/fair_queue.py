"""A bounded queue with strict priority classes and, within a class,
weighted fairness between tenants. Pure data structure: no asyncio, no
gRPC; the pool's dispatcher decides which queued item can run.

Service order: the lowest class number first (0 interactive, 1 standard,
2 batch); within a class, the tenant with the least virtual time (stride
scheduling: serving an item of cost c advances its tenant's virtual time by
c / weight), FIFO within a tenant. A tenant that was idle rejoins at the
class's current virtual time, so idling earns no credit to burst with
later. Backlogged tenants' virtual times never drift apart by more than one
item's cost / weight, so shares follow weights and no tenant starves.

Admission when full (push-out): an item of a more important class than the
least important one queued takes the place of that class's newest item from
its heaviest tenant (items queued / weight); within the same class, a
tenant holding less of the queue than the heaviest one takes that tenant's
newest place. Otherwise the newcomer is refused. The evicted item is
handed back so its caller can be told.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T", bound=Hashable)


@dataclass
class _Tenant(Generic[T]):
    name: str
    weight: float
    # Virtual time: service received, divided by weight.
    vtime: float
    # Queued items and their costs, oldest first.
    items: dict[T, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Admission(Generic[T]):
    admitted: bool
    # An item pushed out to make room (its caller must be told).
    evicted: T | None = None


class FairQueue(Generic[T]):
    def __init__(self, *, limit: int, weight_of: Callable[[str], float], classes: int = 3) -> None:
        if limit < 0:
            raise ValueError("limit must be >= 0")
        self.limit = limit
        self._weight_of = weight_of
        self._tenants: list[dict[str, _Tenant[T]]] = [{} for _ in range(classes)]
        # Per class: the virtual time of the last item served.
        self._class_vtime = [0.0] * classes
        self._where: dict[T, tuple[int, str]] = {}
        self._arrival: dict[T, int] = {}
        self._counter = itertools.count()

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, item: object) -> bool:
        return item in self._where

    @property
    def classes(self) -> int:
        return len(self._tenants)

    def depth(self, cls: int) -> int:
        return sum(len(t.items) for t in self._tenants[cls].values())

    def class_of(self, item: T) -> int:
        return self._where[item][0]

    def push(self, item: T, *, cls: int, tenant: str, cost: float = 1.0) -> Admission[T]:
        if item in self._where:
            raise ValueError("item already queued")
        if not 0 <= cls < self.classes:
            raise ValueError(f"class {cls} out of range 0..{self.classes - 1}")
        evicted: T | None = None
        if len(self._where) >= self.limit:
            evicted = self._victim_for(cls, tenant)
            if evicted is None:
                return Admission(admitted=False)
            self.remove(evicted)
        entry = self._tenants[cls].get(tenant)
        if entry is None:
            entry = _Tenant(tenant, self._weight_of(tenant), self._class_vtime[cls])
            self._tenants[cls][tenant] = entry
        elif not entry.items:
            # Rejoining after idling: no credit for the idle time.
            entry.vtime = max(entry.vtime, self._class_vtime[cls])
        entry.items[item] = max(cost, 1e-9)
        self._where[item] = (cls, tenant)
        self._arrival[item] = next(self._counter)
        return Admission(admitted=True, evicted=evicted)

    def ordered(self) -> list[T]:
        """Every queued item in service order (a snapshot)."""
        result: list[T] = []
        for tenants in self._tenants:
            backlogged = [t for t in tenants.values() if t.items]
            backlogged.sort(key=lambda t: (t.vtime, self._arrival[next(iter(t.items))]))
            for entry in backlogged:
                result.extend(entry.items)
        return result

    def take(self, item: T) -> None:
        """The item is served: dequeue it and charge its tenant."""
        cls, name = self._where.pop(item)
        del self._arrival[item]
        entry = self._tenants[cls][name]
        cost = entry.items.pop(item)
        self._class_vtime[cls] = max(self._class_vtime[cls], entry.vtime)
        entry.vtime += cost / entry.weight
        self._forget_if_idle(cls, entry)

    def remove(self, item: T) -> bool:
        """Dequeue without charging (cancelled, timed out, evicted)."""
        where = self._where.pop(item, None)
        if where is None:
            return False
        del self._arrival[item]
        cls, name = where
        entry = self._tenants[cls][name]
        del entry.items[item]
        self._forget_if_idle(cls, entry)
        return True

    def prune(self) -> None:
        """Forget idle tenants whose history no longer matters, so the
        table stays as small as the set of tenants with queued work."""
        for cls, tenants in enumerate(self._tenants):
            any_backlog = any(t.items for t in tenants.values())
            for name in [n for n, t in tenants.items() if not t.items]:
                if not any_backlog or tenants[name].vtime <= self._class_vtime[cls]:
                    del tenants[name]

    def tenants_known(self) -> int:
        return sum(len(t) for t in self._tenants)

    def _forget_if_idle(self, cls: int, entry: _Tenant[T]) -> None:
        if not entry.items and entry.vtime <= self._class_vtime[cls]:
            del self._tenants[cls][entry.name]

    def _victim_for(self, cls: int, tenant: str) -> T | None:
        occupied = [c for c, tenants in enumerate(self._tenants) if any(t.items for t in tenants.values())]
        lowest = max(occupied, default=-1)
        if lowest < 0 or cls > lowest:
            return None
        heaviest = max(
            (t for t in self._tenants[lowest].values() if t.items),
            key=lambda t: (len(t.items) / t.weight, self._arrival[next(reversed(t.items))]),
        )
        if cls == lowest:
            own = self._tenants[cls].get(tenant)
            own_share = ((len(own.items) if own else 0) + 1) / (own.weight if own else self._weight_of(tenant))
            if heaviest.name == tenant or own_share >= len(heaviest.items) / heaviest.weight:
                return None
        return next(reversed(heaviest.items))
