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
