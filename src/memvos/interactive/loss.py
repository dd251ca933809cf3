"""PML's modified triplet loss (Chen et al., "Blazingly Fast Video Object Segmentation with Pixel-Wise Metric
Learning", CVPR 2018): for each anchor only the *closest* positive and the *closest* negative count."""

from __future__ import annotations

import torch
from torch import Tensor


def closest_distances(
    anchors: Tensor, anchor_labels: Tensor, pool: Tensor, pool_labels: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Euclidean distance of each anchor to its closest positive and closest negative in the pool.

    Args:
        anchors: (N, D) anchor embeddings; anchor_labels: (N,) integer labels (object id, 0 = background).
        pool: (M, D) embeddings of the reference pixels; pool_labels: (M,) their labels.
    Returns:
        d_pos (N,), d_neg (N,) and valid (N,) bool: anchors that have at least one positive and one
        negative in the pool (d_pos / d_neg are +inf where there is none).
    """
    dist = torch.cdist(anchors.float(), pool.float())  # (N, M)
    same = anchor_labels[:, None] == pool_labels[None, :]
    inf = torch.full_like(dist, float("inf"))
    d_pos = torch.where(same, dist, inf).min(dim=1).values
    d_neg = torch.where(same, inf, dist).min(dim=1).values
    valid = torch.isfinite(d_pos) & torch.isfinite(d_neg)
    return d_pos, d_neg, valid


def pml_triplet_loss(
    anchors: Tensor, anchor_labels: Tensor, pool: Tensor, pool_labels: Tensor, alpha: float = 1.0
) -> Tensor:
    """mean over anchors of max(0, d(a, closest positive) - d(a, closest negative) + alpha).

    Shapes as in :func:`closest_distances`. Anchors without a positive or a negative in the pool are left
    out; with no usable anchor at all the loss is a zero that still back-propagates.
    """
    d_pos, d_neg, valid = closest_distances(anchors, anchor_labels, pool, pool_labels)
    if not bool(valid.any()):
        return anchors.sum() * 0.0 + pool.sum() * 0.0
    return torch.relu(d_pos[valid] - d_neg[valid] + alpha).mean()
