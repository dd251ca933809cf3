"""Per-frame DAVIS metrics: region similarity J and boundary measure F, bit-exact with the official code.

The official DAVIS 2017 evaluator (``davisvideochallenge/davis2017-evaluation``, ``metrics.py``) is
reproduced exactly: pixel counts are integers, ratios are float64 divisions, the boundary map follows
``_seg2bmap`` and the boundary tolerance is a disk of radius ``ceil(0.008 * diagonal)`` applied with
``cv2.dilate``. For speed, every computation runs on the bounding box of the two masks grown by one
pixel, which gives the same counts as the full frame (see ``docs/evaluation.md``).

Also here: an *approximation* of the DAVIS 2016 temporal stability T (see :func:`temporal_stability`).
"""

from __future__ import annotations

import math
from functools import lru_cache

import cv2
import numpy as np

BOUND_TH = 0.008
"""Default boundary threshold of the official evaluator (fraction of the image diagonal)."""

__all__ = [
    "BOUND_TH",
    "boundary_tolerance",
    "disk",
    "f_measure",
    "jaccard",
    "mask_bbox",
    "object_scores",
    "scores_with_boxes",
    "seg2bmap",
    "temporal_stability",
    "temporal_stability_pair",
]


def boundary_tolerance(shape: tuple[int, ...], bound_th: float = BOUND_TH) -> int:
    """Boundary tolerance in pixels for an image of ``shape`` (H, W, ...).

    ``bound_th >= 1`` is a tolerance in pixels; otherwise ``ceil(bound_th * sqrt(H^2 + W^2))`` as in the
    official ``f_measure`` (e.g. 480x854 -> 8, 240x432 -> 4, 180x240 -> 3).
    """
    if bound_th >= 1:
        return int(bound_th)
    h, w = int(shape[0]), int(shape[1])
    return int(math.ceil(bound_th * math.sqrt(float(h * h + w * w))))


@lru_cache(maxsize=64)
def disk(radius: int) -> np.ndarray:
    """Disk kernel (2r+1, 2r+1) uint8: offsets with dx^2 + dy^2 <= r^2, as ``skimage.morphology.disk``."""
    r = int(radius)
    grid = np.arange(-r, r + 1)
    kernel = ((grid[:, None] ** 2 + grid[None, :] ** 2) <= r * r).astype(np.uint8)
    kernel.setflags(write=False)
    return kernel


def seg2bmap(seg: np.ndarray) -> np.ndarray:
    """Boundary map of a mask (H, W) -> bool (H, W), exactly the official ``_seg2bmap``.

    A pixel is on the boundary when it differs from its right, lower or lower-right neighbour; in the last
    row only the right neighbour counts, in the last column only the lower one, and the bottom-right pixel
    is never a boundary pixel.
    """
    seg = np.asarray(seg).astype(bool, copy=False)
    if seg.ndim != 2:
        raise ValueError(f"seg2bmap expects a 2-D mask, got shape {seg.shape}")
    b = np.zeros(seg.shape, dtype=bool)
    if seg.size == 0:
        return b
    a = seg[:-1, :-1]
    b[:-1, :-1] = (a ^ seg[:-1, 1:]) | (a ^ seg[1:, :-1]) | (a ^ seg[1:, 1:])
    b[-1, :-1] = seg[-1, :-1] ^ seg[-1, 1:]
    b[:-1, -1] = seg[:-1, -1] ^ seg[1:, -1]
    b[-1, -1] = False
    return b


def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Bounding box ``(y0, y1, x0, x1)`` (end-exclusive) of the non-zero pixels of a (H, W) mask, or None."""
    m = np.asarray(mask)
    if m.dtype == bool:
        m = m.view(np.uint8)
    if m.dtype != np.uint8:
        m = (m != 0).view(np.uint8)
    x, y, w, h = cv2.boundingRect(np.ascontiguousarray(m))
    if w == 0 or h == 0:
        return None
    return y, y + h, x, x + w


def _union_crop(
    boxes: tuple[tuple[int, int, int, int] | None, ...], shape: tuple[int, int]
) -> tuple[slice, slice] | None:
    """Crop covering the boxes grown by one pixel on every side (clipped), or None if all boxes are None.

    Inside such a crop ``seg2bmap`` gives the same boundary pixels as on the full frame and none outside
    it, and a dilation restricted to it gives the same values on the boundary pixels (all of which lie in
    the crop), so every count of J and F is unchanged.
    """
    present = [b for b in boxes if b is not None]
    if not present:
        return None
    y0 = max(min(b[0] for b in present) - 1, 0)
    y1 = min(max(b[1] for b in present) + 1, shape[0])
    x0 = max(min(b[2] for b in present) - 1, 0)
    x1 = min(max(b[3] for b in present) + 1, shape[1])
    return slice(y0, y1), slice(x0, x1)


def _jaccard_counts(pred: np.ndarray, gt: np.ndarray) -> float:
    inters = int(np.count_nonzero(pred & gt))
    union = int(np.count_nonzero(pred | gt))
    if union == 0:
        return 1.0
    return inters / union


def _f_from_crops(pred: np.ndarray, gt: np.ndarray, bound_pix: int) -> float:
    """F of two bool masks that are valid crops (see :func:`_union_crop`)."""
    fg_boundary = seg2bmap(pred)
    gt_boundary = seg2bmap(gt)
    n_fg = int(np.count_nonzero(fg_boundary))
    n_gt = int(np.count_nonzero(gt_boundary))
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1.0, 0.0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0.0, 1.0
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    else:
        kernel = disk(bound_pix)
        fg_dil = cv2.dilate(fg_boundary.view(np.uint8), kernel).view(bool)
        gt_dil = cv2.dilate(gt_boundary.view(np.uint8), kernel).view(bool)
        precision = int(np.count_nonzero(fg_boundary & gt_dil)) / float(n_fg)
        recall = int(np.count_nonzero(gt_boundary & fg_dil)) / float(n_gt)
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def _as_bool_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(pred).astype(bool, copy=False)
    g = np.asarray(gt).astype(bool, copy=False)
    if p.shape != g.shape or p.ndim != 2:
        raise ValueError(f"masks must be 2-D with equal shapes, got {p.shape} and {g.shape}")
    return p, g


def jaccard(pred: np.ndarray, gt: np.ndarray) -> float:
    """Region similarity J = |P & G| / |P | G| of two masks (H, W); 1.0 when both are empty."""
    p, g = _as_bool_pair(pred, gt)
    crop = _union_crop((mask_bbox(p), mask_bbox(g)), p.shape)
    if crop is None:
        return 1.0
    return _jaccard_counts(p[crop], g[crop])


def f_measure(
    pred: np.ndarray, gt: np.ndarray, bound_pix: int | None = None, bound_th: float = BOUND_TH
) -> float:
    """Boundary F-measure of two masks (H, W), the official ``db_eval_boundary`` for one frame.

    ``bound_pix`` is the tolerance radius in pixels; default ``boundary_tolerance(pred.shape, bound_th)``.
    """
    p, g = _as_bool_pair(pred, gt)
    if bound_pix is None:
        bound_pix = boundary_tolerance(p.shape, bound_th)
    crop = _union_crop((mask_bbox(p), mask_bbox(g)), p.shape)
    if crop is None:
        return 1.0
    return _f_from_crops(p[crop], g[crop], int(bound_pix))


def object_scores(pred: np.ndarray, gt: np.ndarray, bound_pix: int) -> tuple[float, float]:
    """(J, F) of one object in one frame; ``pred``/``gt`` bool (H, W), ``bound_pix`` the F tolerance."""
    p, g = _as_bool_pair(pred, gt)
    return scores_with_boxes(p, g, bound_pix, mask_bbox(p), mask_bbox(g))


def scores_with_boxes(
    pred: np.ndarray,
    gt: np.ndarray,
    bound_pix: int,
    pred_box: tuple[int, int, int, int] | None,
    gt_box: tuple[int, int, int, int] | None,
) -> tuple[float, float]:
    """(J, F) of bool masks (H, W) whose bounding boxes (:func:`mask_bbox`, None = empty) are known."""
    crop = _union_crop((pred_box, gt_box), pred.shape)
    if crop is None:
        return 1.0, 1.0
    p = pred[crop]
    g = gt[crop]
    return _jaccard_counts(p, g), _f_from_crops(p, g, bound_pix)


# --------------------------------------------------------------------------------------------------
# Temporal stability (approximation of the DAVIS 2016 T measure)
# --------------------------------------------------------------------------------------------------

_T_POINTS = 64
_T_NBINS_THETA = 12
_T_NBINS_R = 5
_T_R_INNER = 1.0 / 8.0
_T_R_OUTER = 2.0
_EPS = 2.2204e-16


def _longest_contour(mask: np.ndarray) -> np.ndarray | None:
    """Longest contour (by point count) of a bool mask (H, W) as float (n, 2) x/y points, or None."""
    m = np.ascontiguousarray(np.asarray(mask).astype(np.uint8))
    if not m.any():
        return None
    contours, _ = cv2.findContours(m, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return None
    longest = max(contours, key=len)
    return longest.reshape(-1, 2).astype(np.float64)


def _resample_closed(points: np.ndarray, n: int) -> np.ndarray | None:
    """``n`` points equally spaced by arc length along the closed polygon ``points`` (m, 2), or None."""
    closed = np.vstack([points, points[:1]])
    seg = np.hypot(*np.diff(closed, axis=0).T)
    total = float(seg.sum())
    if total <= 0:
        return None
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    targets = np.arange(n) * (total / n)
    x = np.interp(targets, cum, closed[:, 0])
    y = np.interp(targets, cum, closed[:, 1])
    return np.stack([x, y], axis=1)


def _shape_context(points: np.ndarray) -> np.ndarray:
    """Normalised log-polar shape-context histograms (n, 12 * 5) of points (n, 2)."""
    n = points.shape[0]
    diff = points[None, :, :] - points[:, None, :]  # (n, n, 2): vector from point i to point j
    dist = np.hypot(diff[..., 0], diff[..., 1])
    mean_dist = dist.mean()
    r = dist / max(mean_dist, _EPS)
    edges = np.logspace(np.log10(_T_R_INNER), np.log10(_T_R_OUTER), _T_NBINS_R)
    r_bin = np.searchsorted(edges, r, side="right")  # 0.._NBINS_R; _NBINS_R = beyond r_outer
    theta = np.mod(np.arctan2(diff[..., 1], diff[..., 0]), 2 * np.pi)
    t_bin = np.minimum((theta / (2 * np.pi / _T_NBINS_THETA)).astype(np.int64), _T_NBINS_THETA - 1)
    valid = (r_bin < _T_NBINS_R) & ~np.eye(n, dtype=bool)
    rows = np.broadcast_to(np.arange(n)[:, None], (n, n))[valid]
    bins = (t_bin * _T_NBINS_R + r_bin)[valid]
    hist = np.zeros((n, _T_NBINS_THETA * _T_NBINS_R))
    np.add.at(hist, (rows, bins), 1.0)
    return hist / (hist.sum(axis=1, keepdims=True) + _EPS)


def temporal_stability_pair(mask_a: np.ndarray, mask_b: np.ndarray, n_points: int = _T_POINTS) -> float:
    """Approximate DAVIS-2016 temporal instability between two consecutive masks (H, W); lower = stabler.

    Longest contour of each mask, resampled to ``n_points`` points by arc length; log-polar shape-context
    descriptors (12 angle x 5 radius bins, radii 1/8..2 of the mean point distance); chi-square matching
    cost; the best *cyclic one-to-one* alignment of the two point sequences (minimum over all cyclic
    shifts of the mean matched cost). NaN when either mask has no usable contour. This is NOT the original
    measure (which matches with a cyclic dynamic-programming alignment of upsampled polygons).
    """
    ca = _longest_contour(mask_a)
    cb = _longest_contour(mask_b)
    if ca is None or cb is None:
        return float("nan")
    pa = _resample_closed(ca, n_points)
    pb = _resample_closed(cb, n_points)
    if pa is None or pb is None:
        return float("nan")
    ha = _shape_context(pa)
    hb = _shape_context(pb)
    num = (ha[:, None, :] - hb[None, :, :]) ** 2
    den = ha[:, None, :] + hb[None, :, :] + _EPS
    cost = 0.5 * (num / den).sum(axis=2)  # (n, n)
    idx = np.arange(n_points)
    shifted = cost[idx[:, None], (idx[:, None] + idx[None, :]) % n_points]  # [i, s] = cost[i, i+s]
    return float(shifted.mean(axis=0).min())


def temporal_stability(masks: list[np.ndarray] | np.ndarray) -> np.ndarray:
    """Approximate T for each consecutive pair of masks (N, H, W) -> float64 (N-1,) (NaN where undefined)."""
    return np.array(
        [temporal_stability_pair(masks[i], masks[i + 1]) for i in range(len(masks) - 1)], dtype=np.float64
    )
