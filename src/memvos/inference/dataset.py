"""Segment every sequence of a DAVIS- or YouTube-VOS-layout dataset, resumable and sharded.

Layout: ``ROOT/JPEGImages/<seq>/<frame>.jpg`` and ``ROOT/Annotations/<seq>/<frame>.png`` (dense as in DAVIS,
or sparse as in YouTube-VOS). The session receives, for each object, only the mask of the frame where it
first appears, restricted to the objects that are new on that frame; later ground truth is never given.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from memvos.errors import InputError
from memvos.inference.session import InferenceSession
from memvos.inference.video import propagate_video
from memvos.io.frames import natural_key, open_frames
from memvos.io.layout import resolve_dir, sequence_dirs
from memvos.io.masks import read_mask
from memvos.io.writers import MaskWriter

logger = logging.getLogger(__name__)

DONE_MARKER = ".done"


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count``: takes sequences index, index + count, ... of the sorted list."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str | None) -> Shard:
        """ "i/n" (0-based i), or None: from torchrun's RANK / WORLD_SIZE if set, else the whole dataset."""
        if text is None:
            return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)))
        try:
            i, n = (int(v) for v in text.split("/"))
        except ValueError:
            raise InputError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
        if not 0 <= i < n:
            raise InputError(f"--shard {text}: need 0 <= i < n")
        return cls(i, n)

    def select(self, sequences: list[str]) -> list[str]:
        return sequences[self.index :: self.count]


def list_sequences(root: Path) -> list[str]:
    img = root / "JPEGImages"
    if not img.is_dir():
        raise InputError(f"{root} has no JPEGImages/ folder (DAVIS or YouTube-VOS layout expected)")
    return sorted(sequence_dirs(img), key=natural_key)


def first_appearance_masks(
    ann_dir: Path, frame_names: list[str], size: tuple[int, int]
) -> dict[str, np.ndarray]:
    """For each frame where new objects appear: a mask holding only those objects (others set to 0)."""
    seen: set[int] = set()
    out: dict[str, np.ndarray] = {}
    for name in frame_names:
        path = ann_dir / f"{name}.png"
        if not path.is_file():
            continue
        ids = read_mask(path, size)
        new = [int(v) for v in np.unique(ids) if v != 0 and int(v) not in seen]
        if new:
            out[name] = np.where(np.isin(ids, new), ids, 0).astype(np.int32)
            seen.update(new)
    return out


def run_dataset(
    make_session: Callable[[], InferenceSession],
    root: str | Path,
    out_dir: str | Path,
    *,
    sequences: list[str] | None = None,
    shard: Shard = Shard(),
    resume: bool = True,
    progress: bool = True,
) -> list[str]:
    """Segment the sequences of ``root`` (this shard's) into ``out_dir/<seq>/<frame>.png``.

    A finished sequence gets a ``.done`` marker and is skipped when ``resume`` is set.
    Returns the names of the sequences this call segmented or found finished.
    """
    root, out_dir = Path(root), Path(out_dir)
    all_seqs = list_sequences(root)
    if sequences:
        missing = sorted(set(sequences) - set(all_seqs))
        if missing:
            raise InputError(f"sequences not in {root}: {', '.join(missing)}")
        all_seqs = [s for s in all_seqs if s in set(sequences)]
    mine = shard.select(all_seqs)
    logger.info("%d sequences, shard %d/%d takes %d", len(all_seqs), shard.index, shard.count, len(mine))
    done = []
    for i, seq in enumerate(mine):
        seq_out = out_dir / seq
        if resume and (seq_out / DONE_MARKER).is_file():
            logger.info("[%d/%d] %s: already done", i + 1, len(mine), seq)
            done.append(seq)
            continue
        frames = open_frames(resolve_dir(root / "JPEGImages" / seq))
        masks = first_appearance_masks(
            resolve_dir(root / "Annotations" / seq), frames.names, (frames.height, frames.width)
        )
        if not masks:
            logger.warning("[%d/%d] %s: no annotated object, skipped", i + 1, len(mine), seq)
            continue
        session = make_session()
        seq_out.mkdir(parents=True, exist_ok=True)
        with MaskWriter(seq_out) as writer:
            for stem, _, result in propagate_video(
                session, frames, masks, progress=progress, desc=f"[{i + 1}/{len(mine)}] {seq}"
            ):
                writer.submit(stem, result.labels)
        (seq_out / DONE_MARKER).write_text("")
        done.append(seq)
    return done
