"""Shared pytest fixtures: a tiny synthetic two-object clip written to a temporary folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from memvos.precision import cpu_runs_bf16

# The DAVIS palette's first entries (object colours); the full palette is memvos.io.palette.DAVIS_PALETTE.
_PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [0] * (256 * 3 - 12)

#: Tests of the bf16 path: they need oneDNN bf16 kernels (an AVX2-only CPU refuses --precision bf16).
needs_bf16 = pytest.mark.skipif(not cpu_runs_bf16(), reason="this CPU has no bf16 kernels (AVX2 or lower)")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
"""``../shared`` beside the checkout; real DAVIS data lives in ``SHARED / "data"`` (tests skip without it)."""


@dataclass
class TinyClip:
    """A tiny synthetic clip on disk and its exact ground truth.

    ``frames_dir``: JPEG frames ``00000.jpg`` … (quality 95); ``png_frames_dir``: the same frames as lossless
    PNGs; ``mask_path``: first-frame DAVIS palette PNG (ids 1, 2); ``gt_dir``: palette PNGs for every frame;
    ``names``: frame stems; ``labels``: (T, H, W) int32 ground truth; ``frames``: (T, H, W, 3) uint8 RGB as
    rendered (before JPEG compression).
    """

    root: Path
    frames_dir: Path
    png_frames_dir: Path
    mask_path: Path
    gt_dir: Path
    names: list[str]
    labels: np.ndarray
    frames: np.ndarray
    num_objects: int = 2

    @property
    def height(self) -> int:
        return int(self.labels.shape[1])

    @property
    def width(self) -> int:
        return int(self.labels.shape[2])


def render_tiny_clip(num_frames: int = 8, height: int = 64, width: int = 96, seed: int = 0):
    """Render (T, H, W, 3) uint8 frames and (T, H, W) int32 labels: a textured square (id 1) moving right
    and growing, and a striped disc (id 2) moving left in front of it, over a smooth textured background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    coarse = rng.uniform(60, 200, size=(height // 8 + 2, width // 8 + 2, 3)).astype(np.float32)
    bg = np.asarray(
        Image.fromarray(coarse.astype(np.uint8)).resize((width, height), Image.Resampling.BICUBIC), np.float32
    )
    bg += rng.normal(0, 6, size=bg.shape)
    square_tex = np.stack(
        [200 + 40 * np.sin(xx / 2.0), 60 + 30 * np.cos(yy / 1.5), 40 + 20 * np.sin((xx + yy) / 3.0)], axis=-1
    )
    disc_tex = np.stack([40 + 0 * xx, 90 + 80 * ((xx + yy) // 3 % 2), 220 + 0 * yy], axis=-1)
    frames = np.zeros((num_frames, height, width, 3), np.uint8)
    labels = np.zeros((num_frames, height, width), np.int32)
    for t in range(num_frames):
        img = bg.copy()
        lab = np.zeros((height, width), np.int32)
        side = 16 + t  # grows
        x0, y0 = 6 + 5 * t, 12 + t
        sq = (xx >= x0) & (xx < x0 + side) & (yy >= y0) & (yy < y0 + side)
        img[sq] = square_tex[sq]
        lab[sq] = 1
        cx, cy, r = width - 14 - 6 * t, 40 - t, 10
        disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
        img[disc] = disc_tex[disc]
        lab[disc] = 2
        frames[t] = np.clip(img, 0, 255).astype(np.uint8)
        labels[t] = lab
    return frames, labels


def _palette_png(path: Path, labels: np.ndarray) -> None:
    im = Image.fromarray(labels.astype(np.uint8))
    im.putpalette(_PALETTE)
    im.save(path)


@pytest.fixture
def tiny_clip(tmp_path: Path) -> TinyClip:
    """Write a tiny 8-frame 64x96 (H x W) two-object clip under ``tmp_path / "clip"``; see ``TinyClip``."""
    frames, labels = render_tiny_clip()
    root = tmp_path / "clip"
    frames_dir, png_dir, gt_dir = root / "frames", root / "frames_png", root / "gt"
    for d in (frames_dir, png_dir, gt_dir):
        d.mkdir(parents=True)
    names = [f"{t:05d}" for t in range(len(frames))]
    for name, frame, lab in zip(names, frames, labels, strict=True):
        Image.fromarray(frame).save(frames_dir / f"{name}.jpg", quality=95)
        Image.fromarray(frame).save(png_dir / f"{name}.png")
        _palette_png(gt_dir / f"{name}.png", lab)
    mask_path = root / "mask.png"
    _palette_png(mask_path, labels[0])
    return TinyClip(root, frames_dir, png_dir, mask_path, gt_dir, names, labels, frames)


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory):
    """Exports and backend measurements of the tests go to a temporary cache, never the user's."""
    import os

    old = os.environ.get("MEMVOS_CACHE")
    os.environ["MEMVOS_CACHE"] = str(tmp_path_factory.mktemp("memvos-cache"))
    yield
    if old is None:
        os.environ.pop("MEMVOS_CACHE", None)
    else:
        os.environ["MEMVOS_CACHE"] = old
