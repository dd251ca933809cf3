"""Visualisation: object colours blended over frames with contours, and an mp4 writer for such overlays."""

from __future__ import annotations

import logging
import os
import uuid
from fractions import Fraction
from pathlib import Path
from types import TracebackType

import cv2
import numpy as np

from memvos.errors import InputError
from memvos.io.palette import OVERLAY_COLORS

#: Containers the overlay video can be written in (H.264 / MPEG-4 streams).
OVERLAY_SUFFIXES = frozenset({".mp4", ".mkv", ".mov", ".avi"})

__all__ = ["OverlayWriter", "overlay"]

log = logging.getLogger(__name__)


def _boundary(labels: np.ndarray, thickness: int) -> np.ndarray:
    """(H, W) bool: pixels with a different label within ``thickness`` px (4-neighbourhood steps)."""
    pad = np.pad(labels, thickness, mode="edge")
    h, w = labels.shape
    t = thickness
    out = np.zeros((h, w), dtype=bool)
    for k in range(1, t + 1):
        out |= pad[t - k : t - k + h, t : t + w] != labels
        out |= pad[t + k : t + k + h, t : t + w] != labels
        out |= pad[t : t + h, t - k : t - k + w] != labels
        out |= pad[t : t + h, t + k : t + k + w] != labels
    return out


def overlay(frame_rgb: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend object colours over a frame and draw each object's contour in its colour.

    ``frame_rgb`` is (H, W, 3) uint8, ``labels`` (H, W) integer ids (0 = background); colours come from
    ``OVERLAY_COLORS`` (the DAVIS palette for the first 21 objects).  Returns a new (H, W, 3) uint8 image.
    """
    frame = np.asarray(frame_rgb)
    labels = np.asarray(labels)
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.shape[:2] != labels.shape:
        raise ValueError(
            f"overlay needs an (H, W, 3) frame and (H, W) labels, got {frame.shape}, {labels.shape}"
        )
    frame = np.ascontiguousarray(frame, dtype=np.uint8)
    out = frame.copy()
    if labels.max(initial=0) > 255:  # more objects than colours: reuse colours 1..255
        labels = np.where(labels > 0, (labels - 1) % 255 + 1, 0)
    ids = np.ascontiguousarray(labels, dtype=np.uint8)
    fg = ids > 0
    if not fg.any():
        return out
    colors = cv2.LUT(cv2.merge([ids, ids, ids]), OVERLAY_COLORS.reshape(256, 1, 3))  # (H, W, 3)
    blend = cv2.addWeighted(frame, 1.0 - alpha, colors, alpha, 0.0)
    cv2.copyTo(blend, fg.view(np.uint8), out)
    thickness = max(1, round(min(ids.shape) / 300))
    edge = _boundary(ids, thickness) & fg
    cv2.copyTo(colors, edge.view(np.uint8), out)
    return out


def check_video_path(path: str | Path) -> Path:
    """``path`` if it names a video file memvos can write (by its suffix), else a one-line InputError."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"overlay {path} is a folder; give a video file name such as overlay.mp4")
    if path.suffix.lower() not in OVERLAY_SUFFIXES:
        raise InputError(
            f"overlay {path}: unknown video type {path.suffix or '(no suffix)'!r}; use one of "
            + ", ".join(sorted(OVERLAY_SUFFIXES))
        )
    return path


class OverlayWriter:
    """Writes overlays of label maps on frames to a video file (H.264, yuv420p in an mp4 by default).

    ``write(frame_rgb, labels)`` takes an (H, W, 3) uint8 frame and its (H, W) ids; all frames must have
    the size of the first.  Odd sizes are padded to even ones (repeating the last row/column), as yuv420p
    requires.  The video is written to a temporary file beside ``path`` and moved into place by ``close()``;
    leaving the ``with`` block on an exception discards it.
    """

    def __init__(
        self,
        path: str | Path,
        fps: float = 24.0,
        alpha: float = 0.5,
        crf: int = 20,
        preset: str = "veryfast",
    ) -> None:
        import av

        self.path = check_video_path(path)
        self.fps = float(fps) if fps and fps > 0 else 24.0
        self.alpha = alpha
        self.crf = crf
        self.preset = preset
        self.count = 0
        self._size: tuple[int, int] | None = None
        self._stream = None
        self._time_base = Fraction(1, 24)
        self._tmp = self.path.with_name(f".{self.path.stem}.{uuid.uuid4().hex[:12]}.tmp{self.path.suffix}")
        try:
            self._container = av.open(str(self._tmp), mode="w")
        except (av.FFmpegError, OSError, ValueError) as exc:
            self._tmp.unlink(missing_ok=True)
            raise InputError(f"cannot write video {self.path}: {exc}") from exc
        self._closed = False

    def _open_stream(self, height: int, width: int) -> None:
        import av

        codec = next((c for c in ("libx264", "h264", "mpeg4") if c in av.codecs_available), "mpeg4")
        rate = Fraction(self.fps).limit_denominator(1001)
        options = {"crf": str(self.crf), "preset": self.preset} if codec == "libx264" else {}
        stream = self._container.add_stream(codec, rate=rate, options=options)
        stream.width = width + width % 2
        stream.height = height + height % 2
        stream.pix_fmt = "yuv420p"
        self._stream = stream
        self._time_base = 1 / rate
        self._size = (height, width)

    def write(self, frame_rgb: np.ndarray, labels: np.ndarray) -> None:
        """Append one frame: (H, W, 3) uint8 RGB with its (H, W) ids blended over it."""
        import av

        if self._closed:
            raise RuntimeError("OverlayWriter is closed")
        img = overlay(frame_rgb, labels, self.alpha)
        h, w = img.shape[:2]
        if self._stream is None:
            self._open_stream(h, w)
        elif (h, w) != self._size:
            raise ValueError(f"overlay frame is {w}x{h}, the video is {self._size[1]}x{self._size[0]}")
        if h % 2 or w % 2:
            img = np.pad(img, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
        frame.pts = self.count
        frame.time_base = self._time_base
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.count += 1

    def close(self) -> None:
        """Flush the encoder and move the finished video to ``path`` (nothing is written for zero frames)."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._stream is not None:
                for packet in self._stream.encode(None):
                    self._container.mux(packet)
            self._container.close()
        except BaseException:
            self._tmp.unlink(missing_ok=True)
            raise
        if self.count == 0:
            log.warning("no frames were written; %s not created", self.path)
            self._tmp.unlink(missing_ok=True)
            return
        os.replace(self._tmp, self.path)
        log.debug("wrote %d frames to %s", self.count, self.path)

    def abort(self) -> None:
        """Discard the video being written."""
        if self._closed:
            return
        self._closed = True
        try:
            self._container.close()
        except Exception:  # noqa: BLE001 - the file is discarded anyway
            pass
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> OverlayWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
