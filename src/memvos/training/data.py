"""Training samples: T-frame clips from DAVIS-layout videos and static-image pseudo-videos.

A sample is a pure function of (seed, rank, index), so training resumes exactly and DDP ranks differ.
Each sample holds ``frames`` (T, 3, S, S) float in [0, 1], ``masks`` (T, O, S, S) float {0, 1}
(T = ``cfg.frames_per_sample``, O = max_objects, unused slots empty) and ``valid`` (O,) bool.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import IterableDataset, get_worker_info

from memvos.errors import MemvosError
from memvos.io.frames import natural_key
from memvos.io.layout import resolve_dir, sequence_dirs
from memvos.io.masks import read_mask
from memvos.training import augment
from memvos.training.config import TrainConfig

logger = logging.getLogger(__name__)

#: Fewest frames a training sequence needs (the shortest clip the loss can use: one memory, two queries).
MIN_FRAMES = 3
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
#: scikit-image photos bundled with the package (no download), used as static-training backgrounds.
SKIMAGE_PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "brick",
    "grass",
    "gravel",
    "camera",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "cat",
    "coins",
)


@dataclass(frozen=True)
class Sequence:
    """A DAVIS-layout sequence with ground truth on every frame."""

    name: str
    frames: tuple[Path, ...]
    masks: tuple[Path, ...]


def index_davis(
    root: str | Path,
    exclude: set[str] = frozenset(),
    frame_limits: dict[str, list[int]] | None = None,
) -> list[Sequence]:
    """Sequences of ``root/JPEGImages/<seq>`` with masks in ``root/Annotations/<seq>`` (every frame).

    ``frame_limits`` maps a sequence name to ``[start, stop)`` frame indices to keep (the rest is held out).
    """
    root = Path(root)
    img_root, ann_root = root / "JPEGImages", root / "Annotations"
    if not img_root.is_dir() or not ann_root.is_dir():
        raise MemvosError(f"{root} is not a DAVIS-layout dataset (JPEGImages/ and Annotations/ expected)")
    out = []
    for name, seq_dir in sorted(sequence_dirs(img_root).items()):
        if name in exclude:
            continue
        frames = sorted(
            (p for p in seq_dir.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES),
            key=lambda p: natural_key(p.name),
        )
        if frame_limits and name in frame_limits:
            start, stop = frame_limits[name]
            frames = frames[start:stop]
        masks = [resolve_dir(ann_root / name) / f"{p.stem}.png" for p in frames]
        if len(frames) >= MIN_FRAMES and all(m.is_file() for m in masks):
            out.append(Sequence(name, tuple(frames), tuple(masks)))
        else:
            logger.warning("skipping %s: fewer than %d frames or missing masks", seq_dir, MIN_FRAMES)
    return out


@lru_cache(maxsize=4096)
def _load_image(path: Path) -> Tensor:
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"))
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)  # uint8, cached compactly


def load_frame(path: Path) -> Tensor:
    """(3, H, W) float in [0, 1]."""
    return _load_image(path).float() / 255.0


@lru_cache(maxsize=4096)
def load_ids(path: Path) -> np.ndarray:
    return read_mask(path)


def skimage_photos() -> list[Tensor]:
    """The bundled scikit-image photos as (3, H, W) float tensors (missing ones are skipped)."""
    try:
        from skimage import data as skdata
    except ImportError:
        logger.warning("scikit-image is not installed: no static-training photos (pip install memvos[train])")
        return []
    out = []
    for name in SKIMAGE_PHOTOS:
        try:
            arr = np.asarray(getattr(skdata, name)())
        except Exception:  # noqa: BLE001 - a photo that needs a download is simply skipped
            continue
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        arr = arr[..., :3]
        if arr.dtype != np.uint8:
            arr = (255 * (arr - arr.min()) / max(float(np.ptp(arr)), 1e-6)).astype(np.uint8)
        if min(arr.shape[:2]) >= 128:
            out.append(torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255.0)
    return out


def max_gap(cfg: TrainConfig, iteration: int) -> int:
    """Curriculum: the largest frame gap grows linearly from max_gap_start to max_gap_end."""
    t = min(1.0, iteration / max(1, cfg.gap_curriculum_iters))
    return int(round(cfg.max_gap_start + t * (cfg.max_gap_end - cfg.max_gap_start)))


class ClipSampler:
    """Builds training samples (see module docstring) from DAVIS-layout sequences and photos."""

    def __init__(self, cfg: TrainConfig, sequences: list[Sequence], photos: list[Tensor] | None = None):
        sequences = [s for s in sequences if len(s.frames) >= cfg.frames_per_sample]
        if not sequences:
            raise MemvosError(f"no training sequences with at least {cfg.frames_per_sample} frames found")
        self.cfg = cfg
        self.sequences = sequences
        self.photos = photos if photos is not None else (skimage_photos() if cfg.static_photos else [])

    def sample(self, seed: tuple[int, ...], iteration: int) -> dict[str, Tensor]:
        rng = np.random.default_rng(list(seed))
        for _ in range(20):
            if rng.random() < self.cfg.static_prob:
                frames, masks = self._static(rng)
            else:
                frames, masks = self._video(rng, iteration)
            if (
                masks.shape[0]
                and self.cfg.paste_prob > 0
                and masks.shape[0] < self.cfg.max_objects
                and rng.random() < self.cfg.paste_prob
            ):
                frames, masks = self._paste(rng, frames, masks, iteration)
            if masks.shape[1] and rng.random() < self.cfg.distractor_prob:
                frames, masks = self._distractor(rng, frames, masks)
            present = masks[0].flatten(1).sum(1) >= 16  # objects must be visible on the first frame
            masks = masks[:, present]
            if masks.shape[1] > 0:
                break
        return self._pack(frames, masks)

    # ------------------------------------------------------------------ video clips
    def _video_frames(self, rng: np.random.Generator, iteration: int) -> tuple[Sequence, list[int]]:
        """A sequence and ``frames_per_sample`` increasing frame indices (reversed half of the time)."""
        t = self.cfg.frames_per_sample
        seq = self.sequences[int(rng.integers(len(self.sequences)))]
        n = len(seq.frames)
        gap = max(1, min(max_gap(self.cfg, iteration), (n - 1) // (t - 1)))
        first = int(rng.integers(0, n - t + 1))
        idx = [first]
        for _ in range(t - 1):
            idx.append(min(n - 1, idx[-1] + int(rng.integers(1, gap + 1))))
        if len(set(idx)) < t:  # reached the end: take the last t frames
            idx = list(range(n - t, n))
        if rng.random() < 0.5:
            idx = idx[::-1]  # time-reversed clips are valid clips too
        return seq, idx

    def _video(self, rng: np.random.Generator, iteration: int) -> tuple[Tensor, Tensor]:
        """(T, 3, S, S) frames and (T, O, S, S) masks of up to max_objects objects of one sequence."""
        seq, idx = self._video_frames(rng, iteration)
        ids = [load_ids(seq.masks[i]) for i in idx]
        present = [int(v) for v in np.unique(ids[0]) if v != 0]
        if len(present) > self.cfg.max_objects:
            present = sorted(rng.choice(present, self.cfg.max_objects, replace=False).tolist())
        frames = torch.stack([load_frame(seq.frames[i]) for i in idx])
        masks = torch.stack(
            [
                torch.stack([torch.from_numpy(m == o) for o in present]).float()
                if present
                else torch.zeros((0, *m.shape))
                for m in ids
            ]
        )
        return self._crop_clip(rng, frames, masks)

    def _crop_clip(self, rng: np.random.Generator, frames: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
        """Shared random scale + crop, then mild per-frame affine and colour jitter."""
        c = self.cfg
        side = int(c.crop_size * rng.uniform(*c.scale_range))
        out_f, out_m = [], []
        for t in range(frames.shape[0]):
            f, m = augment.resize_min_side(frames[t], masks[t], side)
            out_f.append(f)
            out_m.append(m)
        h, w = out_f[0].shape[-2:]
        y, x = augment.random_crop_box(rng, h, w, c.crop_size, out_m[0])
        s = c.crop_size
        flip = rng.random() < 0.5
        res_f, res_m = [], []
        for f, m in zip(out_f, out_m, strict=True):
            f, m = f[:, y : y + s, x : x + s], m[:, y : y + s, x : x + s]
            if flip:
                f, m = f.flip(-1), m.flip(-1)
            theta = augment.random_affine_matrix(
                rng, max_rotate=5, max_shear=3, scale=(0.95, 1.05), max_translate=0.03
            )
            grid = torch.nn.functional.affine_grid(theta[None], [1, 1, s, s], align_corners=False)
            f, m = augment.warp(f, m, grid)
            res_f.append(augment.color_jitter(rng, f, 0.1, 0.1, 0.1, 0.01))
            res_m.append(m)
        return torch.stack(res_f), torch.stack(res_m)

    # ------------------------------------------------------------------ static pseudo-videos
    def _random_object(self, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
        """A DAVIS frame and the mask of one of its objects (3, H, W), (H, W)."""
        for _ in range(10):
            seq = self.sequences[int(rng.integers(len(self.sequences)))]
            i = int(rng.integers(len(seq.frames)))
            ids = load_ids(seq.masks[i])
            present = [int(v) for v in np.unique(ids) if v != 0]
            if present:
                o = present[int(rng.integers(len(present)))]
                return load_frame(seq.frames[i]), torch.from_numpy(ids == o).float()
        raise MemvosError("could not find a frame with an object")

    def _static(self, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
        """T deformations (affine + thin-plate spline) of one still, with Hide-and-Seek occlusion."""
        s = self.cfg.crop_size
        if self.photos and rng.random() < 0.5:
            # a photo with 1..max_objects objects cut from DAVIS frames pasted on it
            photo = self.photos[int(rng.integers(len(self.photos)))]
            image, _ = augment.resize_min_side(
                photo, photo.new_zeros((0, 1, 1)), int(s * rng.uniform(1.0, 1.5))
            )
            h, w = image.shape[-2:]
            y, x = augment.random_crop_box(rng, h, w, s)
            image = image[:, y : y + s, x : x + s].clone()
            masks = []
            for _ in range(int(rng.integers(1, self.cfg.max_objects + 1))):
                obj_img, obj_mask = self._random_object(rng)
                obj_img, obj_mask = self._fit_object(rng, obj_img, obj_mask, s)
                image = image * (1 - obj_mask) + obj_img * obj_mask
                masks = [m * (1 - obj_mask) for m in masks] + [obj_mask]
            masks_t = torch.stack(masks)
        else:
            frame, mask = self._random_object(rng)
            f, m = augment.resize_min_side(frame, mask[None], int(s * rng.uniform(1.0, 1.4)))
            h, w = f.shape[-2:]
            y, x = augment.random_crop_box(rng, h, w, s, m)
            image, masks_t = f[:, y : y + s, x : x + s], m[:, y : y + s, x : x + s]
        frames, out_masks = [], []
        for _ in range(self.cfg.frames_per_sample):
            f, m = augment.random_deform(rng, image, masks_t)
            f = augment.hide_and_seek(rng, f)
            frames.append(augment.color_jitter(rng, f))
            out_masks.append(m)
        return torch.stack(frames), torch.stack(out_masks)

    def _fit_object(
        self, rng: np.random.Generator, image: Tensor, mask: Tensor, size: int
    ) -> tuple[Tensor, Tensor]:
        """Scale an object to 15-60% of the canvas and place it at random: (3, S, S), (S, S)."""
        ys, xs = torch.nonzero(mask, as_tuple=True)
        y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
        img, m = image[:, y0:y1, x0:x1], mask[y0:y1, x0:x1]
        scale = size * rng.uniform(0.15, 0.6) / max(img.shape[-2:])
        hh, ww = max(4, int(img.shape[-2] * scale)), max(4, int(img.shape[-1] * scale))
        hh, ww = min(hh, size), min(ww, size)
        img = torch.nn.functional.interpolate(img[None], size=(hh, ww), mode="bilinear", align_corners=False)[
            0
        ]
        m = torch.nn.functional.interpolate(m[None, None], size=(hh, ww), mode="nearest")[0, 0]
        canvas, cmask = torch.zeros((3, size, size)), torch.zeros((size, size))
        y, x = int(rng.integers(0, size - hh + 1)), int(rng.integers(0, size - ww + 1))
        canvas[:, y : y + hh, x : x + ww] = img
        cmask[y : y + hh, x : x + ww] = m
        return canvas, cmask

    # ------------------------------------------------------------------ multi-object by pasting
    def _paste(
        self, rng: np.random.Generator, frames: Tensor, masks: Tensor, iteration: int
    ) -> tuple[Tensor, Tensor]:
        """Paste one object of another clip (its T frames) in front of this clip's objects."""
        other_f, other_m = self._video(rng, iteration)
        if other_m.shape[1] == 0:
            return frames, masks
        k = int(rng.integers(other_m.shape[1]))
        pm = other_m[:, k : k + 1]  # (3, 1, S, S)
        if pm.sum() < 32 or pm[0].mean() > 0.5:  # too small or would cover most of the clip
            return frames, masks
        frames = frames * (1 - pm) + other_f * pm
        masks = torch.cat([masks * (1 - pm), pm], dim=1)
        return frames, masks

    # ------------------------------------------------------------------ look-alike distractors
    def _distractor(self, rng: np.random.Generator, frames: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
        """Composite a copy of one of the clip's own objects, moving along its own smooth path.

        The copy is mirrored half of the time, rescaled, slightly recoloured, and passes in front of the
        scene (occluding it: the masks behind lose those pixels) or behind its objects. Half of the time it
        is a tracked object of its own (if a slot is free), otherwise background: either way the model must
        tell two look-alikes apart by where they are and what memory says, not by colour (the crowd and
        same-kind failures). frames (T, 3, S, S), masks (T, O, S, S) -> the same shapes (O may grow by 1).
        """
        k = int(rng.integers(masks.shape[1]))
        src = masks[:, k : k + 1]  # (T, 1, S, S)
        if src[0].sum() < 64:
            return frames, masks
        t_len, s = frames.shape[0], frames.shape[-1]
        mirror = -1.0 if rng.random() < 0.5 else 1.0
        scale = rng.uniform(0.7, 1.25)
        start = rng.uniform(-0.7, 0.7, size=2)
        velocity = rng.uniform(-0.12, 0.12, size=2)
        gain = torch.from_numpy(rng.uniform(0.85, 1.15, size=(3, 1, 1))).float()
        in_front = rng.random() < 0.5
        labelled = rng.random() < 0.5 and masks.shape[1] < self.cfg.max_objects
        out_f, copy_m = [], []
        for t in range(t_len):
            tx, ty = start + velocity * t
            theta = torch.tensor([[mirror / scale, 0.0, tx], [0.0, 1.0 / scale, ty]], dtype=torch.float32)
            grid = torch.nn.functional.affine_grid(theta[None], [1, 1, s, s], align_corners=False)
            f, m = augment.warp(frames[t], src[t], grid)
            out_f.append((f * gain).clamp(0, 1))
            copy_m.append(m)
        obj_f, obj_m = torch.stack(out_f), torch.stack(copy_m)  # (T, 3, S, S), (T, 1, S, S)
        if not in_front:
            obj_m = obj_m * (1 - masks.sum(1, keepdim=True).clamp(0, 1))
        frames = frames * (1 - obj_m) + obj_f * obj_m
        masks = masks * (1 - obj_m)
        if labelled:
            masks = torch.cat([masks, obj_m], dim=1)
        return frames, masks

    def _pack(self, frames: Tensor, masks: Tensor) -> dict[str, Tensor]:
        o = self.cfg.max_objects
        n = min(masks.shape[1], o)
        out = torch.zeros((masks.shape[0], o, *masks.shape[-2:]))
        out[:, :n] = masks[:, :n]
        valid = torch.zeros(o, dtype=torch.bool)
        valid[:n] = True
        return {"frames": frames.clamp(0, 1), "masks": (out > 0.5).float(), "valid": valid}


class SampleStream(IterableDataset):
    """Endless stream of batches' samples for one rank, starting at ``start_iteration``.

    Sample b of iteration i on rank r is ``sampler.sample((seed, r, i, b), i)``; DataLoader workers split
    the iterations between them, so the order is fixed whatever the number of workers.
    """

    def __init__(self, sampler: ClipSampler, seed: int, rank: int, batch_size: int, start_iteration: int):
        self.sampler, self.seed, self.rank = sampler, seed, rank
        self.batch_size, self.start = batch_size, start_iteration

    def __iter__(self):
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        it = self.start + wid
        while True:
            yield it, [self.sampler.sample((self.seed, self.rank, it, b), it) for b in range(self.batch_size)]
            it += nw


def collate(batch: list) -> tuple[int, dict[str, Tensor]]:
    """Collate one (iteration, [samples]) item (DataLoader batch_size=None)."""
    it, samples = batch
    return it, {k: torch.stack([s[k] for s in samples]) for k in samples[0]}
