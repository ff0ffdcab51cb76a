"""Which records a rank computes: a deterministic share of those not yet done.

The records still to do are sorted by id, and rank ``r`` of ``world`` takes every
``world``-th one starting at ``r``. Every rank decides the same to-do list from the same
files (read before any rank writes), so the shares never overlap, and a restart with
another world size simply shares out what is left.

Examples:
    >>> items = [Item(i, f"k{i}", None) for i in range(5)]
    >>> [item.id for item in shard(pending(items, {"k1"}), rank=1, world=2)]
    [2, 4]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Collection, Sequence


@dataclass(frozen=True)
class Item:
    """One unit of a sweep: its id (its order), its key (a hash of its inputs and the run's
    settings) and whatever the job needs to compute it."""

    id: int
    key: str
    payload: Any


def pending(items: Sequence[Item], done_keys: Collection[str]) -> list[Item]:
    """The items whose key is not done, sorted by id (each key once)."""
    seen: set[str] = set()
    todo = []
    for item in sorted(items, key=lambda it: it.id):
        if item.key not in done_keys and item.key not in seen:
            seen.add(item.key)
            todo.append(item)
    return todo


def shard(todo: Sequence[Item], rank: int, world: int) -> list[Item]:
    """Rank ``rank``'s share of ``todo``: positions ``rank, rank + world, ...``."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in a world of {world}")
    return list(todo[rank::world])
