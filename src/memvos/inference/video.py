"""Run a session over a whole frame source: the one loop shared by the CLI, the dataset runner and bench."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from memvos.errors import InputError
from memvos.inference.session import InferenceSession, StepResult
from memvos.io.frames import FrameSource
from memvos.io.masks import read_mask

if TYPE_CHECKING:
    from memvos.timing import StageTimer

logger = logging.getLogger(__name__)


def propagate_video(
    session: InferenceSession,
    frames: FrameSource,
    masks: Mapping[str, Path | np.ndarray],
    *,
    progress: bool = True,
    desc: str = "segment",
    timer: StageTimer | None = None,
) -> Iterator[tuple[str, np.ndarray, StepResult]]:
    """Segment every frame of ``frames``, giving the session the masks of ``masks`` (frame stem -> mask).

    Yields (stem, frame RGB (H, W, 3) uint8, result) in frame order; frames stream, nothing accumulates.
    ``timer``: charged, per frame, the wait for the next decoded frame ("decode_wait") and the session step
    with its mask reading ("step").
    Raises:
        InputError: if no mask is given for any frame, or the first mask holds no object.
    """
    if not masks:
        raise InputError("no mask given: memvos needs the objects' mask on at least one frame")
    size = (frames.height, frames.width)
    first = min(masks, key=frames.names.index)
    bar = tqdm(total=len(frames), desc=desc, unit="frame", disable=not progress, dynamic_ncols=True)
    try:
        it = iter(frames)
        while True:
            t0 = time.perf_counter()
            try:
                stem, rgb = next(it)
            except StopIteration:
                break
            t1 = time.perf_counter()
            mask = None
            if stem in masks:
                given = masks[stem]
                mask = read_mask(given, size) if isinstance(given, Path | str) else np.asarray(given)
                if stem == first and not (mask > 0).any():
                    raise InputError(
                        f"the first mask ({given if isinstance(given, Path | str) else stem}) is empty: "
                        "it holds no object"
                    )
            result = session.step(rgb, mask)
            t2 = time.perf_counter()
            if timer is not None:
                timer.add("decode_wait", t1 - t0)
                timer.add("step", t2 - t1)
            bar.update(1)
            yield stem, rgb, result
    finally:
        bar.close()
