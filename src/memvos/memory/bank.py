"""Storage of memory entries (keys and per-object values) and the read over them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from memvos.memory.policy import EntryKind, MemoryPolicy
from memvos.memory.read import MemoryReader


@dataclass
class MemoryEntry:
    """One memorised frame.

    Attributes:
        frame_index: index of the frame in the video.
        kind: lifetime of the entry.
        key: (K, Ck, h, w); K = 1 (shared key) or len(object_ids) (one key per object).
        value: (len(object_ids), Cv, h, w).
        object_ids: ids of the objects whose values (and keys, if per object) the entry holds, in row order.
    """

    frame_index: int
    kind: EntryKind
    key: Tensor
    value: Tensor
    object_ids: tuple[int, ...]


class MemoryBank:
    """Ordered memory entries under a :class:`MemoryPolicy`.

    Entries are kept in insertion order with the TEMPORARY entry (if any) last, which is the order the
    STM reference concatenates memory in. Objects that first appeared on a later frame are read only from
    the entries that hold them.
    """

    def __init__(self, policy: MemoryPolicy, shared_key: bool) -> None:
        self.policy = policy
        self.shared_key = shared_key
        self.entries: list[MemoryEntry] = []

    def __len__(self) -> int:
        return len(self.entries)

    def clear(self) -> None:
        self.entries.clear()

    @property
    def frame_indices(self) -> list[int]:
        return [e.frame_index for e in self.entries]

    def add(self, entry: MemoryEntry) -> None:
        """Insert an entry: drop the previous TEMPORARY entry and any entry of the same frame, then evict."""
        self.entries = [
            e
            for e in self.entries
            if e.kind is not EntryKind.TEMPORARY and e.frame_index != entry.frame_index
        ]
        self.entries.append(entry)
        self._evict()

    def _evict(self) -> None:
        cap = self.policy.max_frames
        if cap is None:
            return
        while len(self.entries) > cap:
            periodic = [i for i, e in enumerate(self.entries) if e.kind is EntryKind.PERIODIC]
            if not periodic:
                return
            del self.entries[periodic[0]]

    def remove_object(self, object_id: int) -> None:
        """Forget an object's values (and keys) in every entry; entries left empty are dropped."""
        kept = []
        for e in self.entries:
            if object_id not in e.object_ids:
                kept.append(e)
                continue
            rows = [i for i, o in enumerate(e.object_ids) if o != object_id]
            if not rows:
                continue
            idx = torch.tensor(rows, device=e.value.device)
            key = e.key if self.shared_key else e.key.index_select(0, idx)
            ids = tuple(e.object_ids[i] for i in rows)
            kept.append(MemoryEntry(e.frame_index, e.kind, key, e.value.index_select(0, idx), ids))
        self.entries = kept

    def read(self, reader: MemoryReader, query_key: Tensor, object_ids: Sequence[int]) -> Tensor:
        """Memory read for every object.

        Args:
            query_key: (1, Ck, h, w).
            object_ids: objects to read for; each must be held by at least one entry.
        Returns:
            (len(object_ids), Cv, h, w).
        """
        _, ck, h, w = query_key.shape
        q = query_key.reshape(1, ck, h * w)
        # Objects held by the same entries share one affinity (shared key) or one concatenation.
        groups: dict[tuple[int, ...], list[int]] = {}
        for pos, oid in enumerate(object_ids):
            holding = tuple(i for i, e in enumerate(self.entries) if oid in e.object_ids)
            if not holding:
                raise KeyError(f"object {oid} is in no memory entry")
            groups.setdefault(holding, []).append(pos)
        out: Tensor | None = None
        for holding, positions in groups.items():
            entries = [self.entries[i] for i in holding]
            ids = [object_ids[p] for p in positions]
            values = torch.cat([_rows(e.value, e.object_ids, ids).flatten(2) for e in entries], dim=2)
            if self.shared_key:
                keys = torch.cat([e.key.flatten(2) for e in entries], dim=2)  # (1, Ck, M)
                query = q
            else:
                keys = torch.cat([_rows(e.key, e.object_ids, ids).flatten(2) for e in entries], dim=2)
                query = q.expand(len(ids), -1, -1)
            read = reader(keys, values, query, (h, w))  # (n, Cv, h*w)
            if out is None:
                out = read.new_empty((len(object_ids), read.shape[1], h * w))
            out[positions] = read
        assert out is not None, "read with no objects"
        return out.reshape(len(object_ids), -1, h, w)


def _rows(t: Tensor, row_ids: tuple[int, ...], wanted: Sequence[int]) -> Tensor:
    """Rows of ``t`` (indexed like ``row_ids``) for the ``wanted`` ids, in that order."""
    if tuple(wanted) == row_ids:
        return t
    index = [row_ids.index(o) for o in wanted]
    return t[index]
