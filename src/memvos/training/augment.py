"""Geometric and photometric augmentations for training samples, in torch, driven by an explicit RNG.

Images are (3, H, W) float in [0, 1]; masks (O, H, W) float in {0, 1}. Every function takes a
``numpy.random.Generator`` so a sample is a pure function of its seed (exact resume).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

#: Thin-plate-spline control grid (per side) and maximal control point offset (fraction of the image).
TPS_GRID = 4
TPS_MAX_OFFSET = 0.06


def random_affine_matrix(
    rng: np.random.Generator,
    max_rotate: float = 15.0,
    max_shear: float = 10.0,
    scale: tuple[float, float] = (0.9, 1.1),
    max_translate: float = 0.1,
) -> Tensor:
    """(2, 3) affine matrix in normalised coordinates for ``F.affine_grid`` (output -> input sampling)."""
    angle = math.radians(rng.uniform(-max_rotate, max_rotate))
    shear = math.radians(rng.uniform(-max_shear, max_shear))
    s = rng.uniform(*scale)
    tx, ty = rng.uniform(-max_translate, max_translate, size=2) * 2
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    sh = np.array([[1.0, math.tan(shear)], [0.0, 1.0]])
    a = (rot @ sh) / s
    return torch.tensor([[a[0, 0], a[0, 1], tx], [a[1, 0], a[1, 1], ty]], dtype=torch.float32)


def _tps_kernel(r2: np.ndarray) -> np.ndarray:
    return np.where(r2 > 0, r2 * np.log(np.maximum(r2, 1e-12)), 0.0)


def tps_grid(rng: np.random.Generator, height: int, width: int, max_offset: float = TPS_MAX_OFFSET) -> Tensor:
    """Sampling grid (1, H, W, 2) of a random thin-plate-spline warp.

    Control points on a TPS_GRID x TPS_GRID lattice in [-1, 1]^2 move by up to ``max_offset`` * 2; the TPS
    interpolating the displacements is solved exactly and evaluated on every pixel.
    """
    lin = np.linspace(-1, 1, TPS_GRID)
    src = np.stack(np.meshgrid(lin, lin, indexing="xy"), -1).reshape(-1, 2)
    disp = rng.uniform(-max_offset, max_offset, size=src.shape) * 2
    n = len(src)
    k = _tps_kernel(((src[:, None] - src[None]) ** 2).sum(-1))
    p = np.concatenate([np.ones((n, 1)), src], 1)
    a = np.zeros((n + 3, n + 3))
    a[:n, :n], a[:n, n:], a[n:, :n] = k, p, p.T
    b = np.zeros((n + 3, 2))
    b[:n] = disp
    coef = np.linalg.solve(a, b)
    ys, xs = np.linspace(-1, 1, height), np.linspace(-1, 1, width)
    pts = np.stack(np.meshgrid(xs, ys, indexing="xy"), -1).reshape(-1, 2)
    u = _tps_kernel(((pts[:, None] - src[None]) ** 2).sum(-1))
    d = u @ coef[:n] + np.concatenate([np.ones((len(pts), 1)), pts], 1) @ coef[n:]
    return torch.from_numpy((pts + d).reshape(1, height, width, 2)).float()


def warp(image: Tensor, masks: Tensor, grid: Tensor) -> tuple[Tensor, Tensor]:
    """Resample image (3, H, W) bilinearly, masks (O, H, W) nearest, through ``grid`` (1, H', W', 2)."""
    img = F.grid_sample(image[None], grid, mode="bilinear", padding_mode="reflection", align_corners=False)[0]
    if masks.shape[0] == 0:
        return img, masks.new_zeros((0, *grid.shape[1:3]))
    m = F.grid_sample(masks[None], grid, mode="nearest", padding_mode="zeros", align_corners=False)[0]
    return img, m


def random_deform(
    rng: np.random.Generator, image: Tensor, masks: Tensor, affine: bool = True, tps: bool = True
) -> tuple[Tensor, Tensor]:
    """Random affine and/or thin-plate-spline deformation of an image and its masks."""
    h, w = image.shape[-2:]
    theta = random_affine_matrix(rng) if affine else torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])
    grid = F.affine_grid(theta[None], [1, 1, h, w], align_corners=False)
    if tps:
        t = tps_grid(rng, h, w)
        # compose: output -> tps -> affine -> input
        grid = F.grid_sample(
            grid.permute(0, 3, 1, 2), t, mode="bilinear", padding_mode="border", align_corners=False
        ).permute(0, 2, 3, 1)
    return warp(image, masks, grid)


def hide_and_seek(rng: np.random.Generator, image: Tensor, grid: int = 8, prob: float = 0.15) -> Tensor:
    """Hide-and-Seek (Singh & Lee 2017): each cell of a grid x grid partition is replaced by the mean colour
    with probability ``prob``. Masks are unchanged: the network learns to segment through occlusion."""
    h, w = image.shape[-2:]
    hidden = rng.random((grid, grid)) < prob
    if not hidden.any():
        return image
    cell = torch.from_numpy(hidden.astype(np.float32))[None, None]
    keep = 1 - F.interpolate(cell, size=(h, w), mode="nearest")[0]
    mean = image.mean(dim=(1, 2), keepdim=True)
    return image * keep + mean * (1 - keep)


def color_jitter(
    rng: np.random.Generator,
    image: Tensor,
    brightness: float = 0.2,
    contrast: float = 0.2,
    saturation: float = 0.2,
    hue: float = 0.03,
) -> Tensor:
    """Random brightness, contrast, saturation and (approximate, channel-rotation) hue shift."""
    img = image * rng.uniform(1 - brightness, 1 + brightness)
    mean = img.mean()
    img = (img - mean) * rng.uniform(1 - contrast, 1 + contrast) + mean
    gray = img.mean(0, keepdim=True)
    img = (img - gray) * rng.uniform(1 - saturation, 1 + saturation) + gray
    if hue > 0:
        a = rng.uniform(-hue, hue) * 2 * math.pi
        c, s = math.cos(a), math.sin(a)
        k = 1 / 3
        sq = math.sqrt(k)
        rot = torch.tensor(
            [
                [c + (1 - c) * k, k * (1 - c) - sq * s, k * (1 - c) + sq * s],
                [k * (1 - c) + sq * s, c + k * (1 - c), k * (1 - c) - sq * s],
                [k * (1 - c) - sq * s, k * (1 - c) + sq * s, c + k * (1 - c)],
            ],
            dtype=img.dtype,
        )
        img = torch.einsum("ij,jhw->ihw", rot, img)
    return img.clamp(0, 1)


def random_crop_box(
    rng: np.random.Generator, height: int, width: int, size: int, masks: Tensor | None = None, tries: int = 10
) -> tuple[int, int]:
    """Top-left of a size x size crop, preferring crops that keep some foreground of ``masks`` (O, H, W)."""
    best, best_fg = (0, 0), -1.0
    for _ in range(tries):
        y = int(rng.integers(0, height - size + 1))
        x = int(rng.integers(0, width - size + 1))
        if masks is None or masks.shape[0] == 0:
            return y, x
        fg = float(masks[:, y : y + size, x : x + size].amax(0).sum())
        if fg > best_fg:
            best, best_fg = (y, x), fg
        if fg > 0.02 * size * size:
            return y, x
    return best


def resize_min_side(image: Tensor, masks: Tensor, min_side: int) -> tuple[Tensor, Tensor]:
    """Resize so that the shorter side is ``min_side`` (image bilinear, masks nearest)."""
    h, w = image.shape[-2:]
    s = min_side / min(h, w)
    size = (max(min_side, round(h * s)), max(min_side, round(w * s)))
    if size == (h, w):
        return image, masks
    img = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    m = (
        F.interpolate(masks[None], size=size, mode="nearest")[0]
        if masks.shape[0]
        else masks.new_zeros((0, *size))
    )
    return img, m
