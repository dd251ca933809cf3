"""Per-object statistics of a per-frame metric (the official ``utils.db_statistics``) and global rows."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

__all__ = ["N_DECAY_BINS", "decay_bin_indices", "db_statistics", "mean_over"]

N_DECAY_BINS = 4


def decay_bin_indices(n: int, official_uint8: bool = False) -> np.ndarray:
    """Boundary indices (5,) int64 of the 4 decay bins for ``n`` per-frame values.

    ``round(linspace(1, n, 5) + 1e-10) - 1`` (numpy rounding; the ``1e-10`` turns exact halves upwards).
    The official code casts them to uint8, which wraps for ``n >= 257``; ``official_uint8=True``
    reproduces that wrap (for documentation and tests only).
    """
    ids = np.round(np.linspace(1, n, N_DECAY_BINS + 1) + 1e-10) - 1
    if official_uint8:
        return ids.astype(np.uint8).astype(np.int64)
    return ids.astype(np.int64)


def db_statistics(values: Sequence[float] | np.ndarray) -> tuple[float, float, float]:
    """(Mean, Recall, Decay) of per-frame values (N,), exactly as the official ``db_statistics``.

    Mean = nanmean(v); Recall = mean(v > 0.5); Decay = nanmean(first bin) - nanmean(last bin), where the
    bins share their boundary frames. Unlike the official code the bin indices do not wrap at 256.
    """
    v = np.ascontiguousarray(values, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        mean = np.nanmean(v)
        recall = np.nanmean(v > 0.5)
        ids = decay_bin_indices(len(v))
        bins = [v[ids[i] : ids[i + 1] + 1] for i in range(N_DECAY_BINS)]
        decay = np.nanmean(bins[0]) - np.nanmean(bins[3])
    return float(mean), float(recall), float(decay)


def mean_over(values: Sequence[float]) -> float:
    """Mean of per-object values (the official global row: ``np.mean`` over a list); NaN if empty."""
    if len(values) == 0:
        return float("nan")
    return float(np.mean(np.asarray(values, dtype=np.float64)))
