"""Soft aggregation of independent per-object probabilities (RGMP / STM)."""

from __future__ import annotations

import torch
from torch import Tensor

#: Probabilities are clamped to [EPS, 1 - EPS] before the logit, as in the STM reference.
AGGREGATION_EPS = 1e-7


def soft_aggregate(prob: Tensor, eps: float = AGGREGATION_EPS, dim: int = 0) -> Tensor:
    """Merge independent foreground probabilities into one distribution over {background, objects}.

    Args:
        prob: (N, H, W) foreground probability of each of N objects, computed independently
            (objects along ``dim``; e.g. (B, N, H, W) with dim=1 in training).
    Returns:
        (N + 1, H, W) probabilities summing to 1 over ``dim``; channel 0 is the background.
        Background = prod_o (1 - p_o); every channel clamped to [eps, 1 - eps];
        logit = log(p / (1 - p)); result = softmax over channels of those logits.
    """
    bg = torch.prod(1 - prob, dim=dim, keepdim=True)
    em = torch.cat([bg, prob], dim=dim).clamp(eps, 1 - eps)
    logits = torch.log(em / (1 - em))
    return torch.softmax(logits, dim=dim)


#: Up to this many channels :func:`labels_from_probs` scans them one by one: 1.2-2x faster than
#: ``max(dim=0)`` (a strided reduction) for 2-17 channels of 480 x 854; above, ``max(dim=0)``.
SCAN_MAX_CHANNELS = 32


def labels_from_probs(probs: Tensor, ids: list[int]) -> Tensor:
    """(N + 1, H, W) probabilities (channel 0 background) -> (H, W) int32 ids, 0 = background.

    The first maximum wins on ties, like ``argmax``. ``ids[k]`` is the id of channel ``k + 1``.
    """
    if len(ids) + 1 != probs.shape[0]:
        raise ValueError(f"{probs.shape[0]} channels for {len(ids)} ids")
    if probs.shape[0] > SCAN_MAX_CHANNELS:
        lut = torch.tensor([0, *ids], dtype=torch.int32, device=probs.device)
        return lut[probs.max(dim=0).indices]
    best = probs[0].clone()
    labels = torch.zeros(probs.shape[1:], dtype=torch.int32, device=probs.device)
    for channel, oid in enumerate(ids, start=1):
        labels.masked_fill_(probs[channel] > best, oid)  # strictly greater: earlier channels win ties
        torch.maximum(best, probs[channel], out=best)
    return labels
