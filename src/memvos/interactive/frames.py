"""Random access to the frames of a video for interactive use, built on :func:`memvos.io.frames.open_frames`.

A folder of images is read frame by frame on demand. A video file is decoded once (streaming, through
``open_frames``) into lossless PNGs in a cache folder, so that any frame can be fetched quickly and
propagation can run backwards. Decoded frames are kept in a small LRU cache.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
from PIL import Image

from memvos.errors import InputError
from memvos.io.atomic import atomic_write
from memvos.io.frames import FrameSource, open_frames

logger = logging.getLogger(__name__)

_READ_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class FrameStore:
    """Frames of one video by index: ``store[i]`` -> (H, W, 3) uint8 RGB.

    Attributes: ``path``, ``names`` (frame stems), ``height``, ``width``, ``fps``.
    """

    def __init__(self, video: str | Path | FrameSource, cache_dir: str | Path | None = None, cache: int = 16):
        self.source = video if isinstance(video, FrameSource) else open_frames(video)
        src = self.source
        self.path = src.path
        self.names = list(src.names)
        self.height, self.width, self.fps = src.height, src.width, src.fps
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cache_size = max(1, cache)
        self._lock = threading.Lock()
        self._tmp: Path | None = None
        self._files: list[Path] | None = getattr(src, "files", None)
        self._arrays: np.ndarray | None = getattr(src, "frames", None)  # in-memory sources
        if self._files is None and self._arrays is None:
            self._files = self._extract(cache_dir)

    def _extract(self, cache_dir: str | Path | None) -> list[Path]:
        """Decode a video file once into ``cache_dir`` (or a temporary folder) as PNGs."""
        if cache_dir is None:
            self._tmp = Path(tempfile.mkdtemp(prefix="memvos-frames-"))
            folder = self._tmp
        else:
            folder = Path(cache_dir)
            folder.mkdir(parents=True, exist_ok=True)
        files = []
        logger.info("decoding %s (%d frames) into %s", self.path, len(self.names), folder)
        for stem, rgb in self.source:  # raises InputError naming a frame that fails to decode
            f = folder / f"{stem}.png"
            if not f.is_file():
                image = Image.fromarray(rgb)
                atomic_write(f, lambda fh, im=image: im.save(fh, format="PNG", compress_level=1), fsync=False)
            files.append(f)
        self.names = list(self.source.names)[: len(files)]
        if not files:
            raise InputError(f"video {self.path} has no frames")
        return files

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> np.ndarray:
        index = self.check_index(index)
        with self._lock:
            if index in self._cache:
                self._cache.move_to_end(index)
                return self._cache[index]
        if self._arrays is not None:
            arr = np.ascontiguousarray(self._arrays[index])
        else:
            assert self._files is not None
            f = self._files[index]
            try:
                with Image.open(f) as im:
                    im.load()
                    arr = np.asarray(im if im.mode == "RGB" else im.convert("RGB"))
            except _READ_ERRORS as exc:
                raise InputError(f"cannot decode frame {index} ({f.name}) of {self.path}: {exc}") from exc
            if arr.shape != (self.height, self.width, 3):
                raise InputError(
                    f"frame {index} ({f.name}) is {arr.shape[1]}x{arr.shape[0]}, the video is "
                    f"{self.width}x{self.height}"
                )
        with self._lock:
            self._cache[index] = arr
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return arr

    def check_index(self, index: int) -> int:
        try:
            i = int(index)
        except (TypeError, ValueError):
            raise InputError(f"frame index must be an integer, got {index!r}") from None
        if not 0 <= i < len(self.names):
            raise InputError(f"frame {index} does not exist (the video has frames 0..{len(self.names) - 1})")
        return i

    def close(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
