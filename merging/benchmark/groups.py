"""Items that share a key belong together: the groups a split must keep on one side (text examples sharing a
text or a story, emoji sharing a picture)."""
from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence


def connected_groups(keys: Sequence[Iterable[Hashable]]) -> list[list[int]]:
    """Indices of the items connected through shared keys (``keys[i]``: item i's), transitively (union-find):
    the groups in the order of their first item, each in ascending order."""
    parent = list(range(len(keys)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[Hashable, int] = {}
    for i, item_keys in enumerate(keys):
        for key in item_keys:
            parent[root(i)] = root(owner.setdefault(key, i))
    groups: dict[int, list[int]] = {}
    for i in range(len(keys)):
        groups.setdefault(root(i), []).append(i)
    return list(groups.values())
