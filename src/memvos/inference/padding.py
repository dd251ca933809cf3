"""Padding to a multiple of the network stride, split exactly as the STM reference does."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

Pad = tuple[int, int, int, int]  # (left, right, top, bottom), the order F.pad takes for the last two dims


def compute_pad(height: int, width: int, divisor: int = 16) -> Pad:
    """Pad needed to reach the next multiple of ``divisor``: floor(pad/2) before, the rest after.

    480x854 -> 480x864 gives (5, 5, 0, 0).
    """
    new_h = -(-height // divisor) * divisor
    new_w = -(-width // divisor) * divisor
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return (left, new_w - width - left, top, new_h - height - top)


def pad_to_multiple(x: Tensor, divisor: int = 16) -> tuple[Tensor, Pad]:
    """Zero-pad the last two dims of ``x`` (..., H, W) to multiples of ``divisor``."""
    pad = compute_pad(x.shape[-2], x.shape[-1], divisor)
    if any(pad):
        x = F.pad(x, pad)
    return x, pad


def unpad(x: Tensor, pad: Pad) -> Tensor:
    """Crop what :func:`pad_to_multiple` added from the last two dims."""
    left, right, top, bottom = pad
    h, w = x.shape[-2], x.shape[-1]
    return x[..., top : h - bottom, left : w - right]
