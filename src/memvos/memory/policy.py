"""Memory policy: which frames are memorised, as what kind of entry, and what is evicted."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from memvos.errors import OptionError


class EntryKind(enum.Enum):
    """How long a memory entry lives.

    ANNOTATED: a frame with a user-given mask (the first frame included); never evicted.
    PERIODIC: every ``mem_every``-th frame with its soft predicted probabilities; evicted oldest first
        when the bank exceeds its capacity.
    TEMPORARY: the previous frame; replaced by the next one.
    """

    ANNOTATED = "annotated"
    PERIODIC = "periodic"
    TEMPORARY = "temporary"


@dataclass(frozen=True)
class MemoryPolicy:
    """STM's schedule with a capacity bound.

    Attributes:
        mem_every: a frame t becomes a PERIODIC entry when (t - t0) % mem_every == 0, t0 being the first
            annotated frame (STM reference: frames 0, 5, 10, ...). 0 disables periodic entries.
        max_frames: at most this many entries (all kinds counted); the oldest PERIODIC entries are evicted
            first. ANNOTATED entries are never evicted, so a bank with more annotated frames than
            ``max_frames`` holds those plus the previous frame. None means unbounded (STM reference).
        use_previous: keep the previous frame as a TEMPORARY entry (STM reference: yes).
    """

    mem_every: int = 5
    max_frames: int | None = 50
    use_previous: bool = True

    def __post_init__(self) -> None:
        if self.mem_every < 0:
            raise OptionError(f"mem_every must be >= 0, not {self.mem_every}")
        if self.max_frames is not None and self.max_frames < 1:
            raise OptionError(
                f"the memory capacity must be >= 1 frame (0 or None: unbounded), not {self.max_frames}"
            )

    def kind_for(self, frame_index: int, first_annotated: int, annotated: bool) -> EntryKind | None:
        """Kind of entry frame ``frame_index`` becomes once it has been segmented (None: not memorised)."""
        if annotated:
            return EntryKind.ANNOTATED
        if self.mem_every and (frame_index - first_annotated) % self.mem_every == 0:
            return EntryKind.PERIODIC
        if self.use_previous:
            return EntryKind.TEMPORARY
        return None
