"""Object-id bookkeeping: user ids (any non-negative ints, e.g. {3, 7, 200}) <-> channel order."""

from __future__ import annotations

from collections.abc import Iterable


class ObjectManager:
    """Keeps the tracked object ids in the order they were first seen (= probability channel order).

    Channel 0 of the session's probabilities is the background; object ``ids[i]`` is channel ``i + 1``.
    """

    def __init__(self) -> None:
        self._ids: list[int] = []

    @property
    def ids(self) -> list[int]:
        return list(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, object_id: int) -> bool:
        return object_id in self._ids

    def add(self, ids: Iterable[int]) -> list[int]:
        """Register ids not yet tracked; returns the new ones, in order."""
        new = []
        for oid in ids:
            oid = int(oid)
            if oid <= 0:
                raise ValueError(f"object ids must be positive (0 is the background), got {oid}")
            if oid not in self._ids:
                self._ids.append(oid)
                new.append(oid)
        return new

    def remove(self, object_id: int) -> None:
        if object_id not in self._ids:
            raise KeyError(f"unknown object id {object_id}")
        self._ids.remove(object_id)

    def channel(self, object_id: int) -> int:
        """Channel of ``object_id`` in (background + objects) probabilities."""
        return self._ids.index(object_id) + 1
