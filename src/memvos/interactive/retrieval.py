"""Masks from user annotations by nearest-neighbour retrieval in pixel-embedding space (PML).

Every annotation of an object becomes *reference cells* of the stride-8 embedding grid: positive cells
(positive clicks, positive scribbles, the centre of a box, the inside of a given mask) and negative cells
(negative clicks and scribbles, the outside of a box or of a mask). A cell belongs to object k when its
closest positive reference of k is closer than its closest negative one, the negatives of k including
every other object's positives. Without any negative (or beyond a distance ``threshold``, widened when
there are few positives) a cell is background. With a box, the object is confined to the box; inside it a
cell is the object when it is closer to the central seed than to the outside, or far from everything
outside. Scores are
upsampled bilinearly to the frame, so boundaries are smooth at full resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from memvos.interactive.annotations import ObjectAnnotation

STRIDE = 8
MAX_MASK_REFS = 1024  # positive (and negative) reference cells kept from a given mask
MAX_BOX_NEGATIVES = 768  # background cells kept from outside a box (the ring next to it always)
BOX_SEED_FRACTION = 0.25  # the positive seed of a box: its central part, this fraction of each side
#: The trained threshold is the midpoint of distances to the *closest of many* positives; with only P
#: reference cells the closest one is farther, so the threshold widens by (1 + SLACK / sqrt(P)). 0.6 was
#: chosen on the first frames of six held-out DAVIS train sequences (one click: mean IoU 0.20 -> 0.5).
FEW_REFERENCES_SLACK = 0.6
#: Inside a box a cell is also the object when its closest background reference (outside the box) is
#: farther than this x the threshold: the box centre need not be on the object (a paraglider's wing).
#: Chosen on the same six first frames (box: mean IoU 0.49 -> 0.56).
BOX_BACKGROUND_FACTOR = 1.2
UNTRAINED_THRESHOLD_FACTOR = 0.8  # untrained embeddings: threshold = this x median distance to the positives
_NEG = -1.0e4


@dataclass
class ObjectReferences:
    """Reference cells (flat indices into the (h, w) grid) of one object on one frame."""

    obj_id: int
    pos: np.ndarray  # (P,) int64
    neg: np.ndarray  # (Q,) int64
    box: tuple[float, float, float, float] | None = None  # pixel box confining the object
    retrieve: bool = True  # False: the object's given mask is used as is (its positives still count)


def _evenly(idx: np.ndarray, k: int) -> np.ndarray:
    if len(idx) <= k:
        return idx
    return idx[np.linspace(0, len(idx) - 1, k).round().astype(np.int64)]


def _point_cell(x: float, y: float, grid: tuple[int, int]) -> int:
    h, w = grid
    i = min(h - 1, max(0, int(y // STRIDE)))
    j = min(w - 1, max(0, int(x // STRIDE)))
    return i * w + j


def _scribble_cells(points: list[tuple[float, float]], grid: tuple[int, int]) -> np.ndarray:
    """Cells crossed by a polyline given in pixel coordinates."""
    canvas = np.zeros(grid, np.uint8)
    # cv2 fixed point with shift=3: coordinate / 8 = position in cells; cell centres sit at integers.
    pts = np.array([[round(x - STRIDE / 2), round(y - STRIDE / 2)] for x, y in points], np.int32)
    if len(pts) == 1:
        return np.array([_point_cell(*points[0], grid)], np.int64)
    cv2.polylines(canvas, [pts.reshape(-1, 1, 2)], False, 1, thickness=1, lineType=cv2.LINE_8, shift=3)
    for x, y in points:  # the vertices themselves, whatever the rasteriser did at the ends
        canvas.flat[_point_cell(x, y, grid)] = 1
    return np.flatnonzero(canvas)


def _cell_fraction(mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(H, W) bool -> (h, w) fraction of each cell covered."""
    h, w = grid
    padded = np.zeros((h * STRIDE, w * STRIDE), np.float32)
    padded[: mask.shape[0], : mask.shape[1]] = mask
    return padded.reshape(h, STRIDE, w, STRIDE).mean(axis=(1, 3))


def _box_cells(
    box: tuple[float, float, float, float], grid: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """(positive seed cells at the box centre, negative cells outside the box)."""
    h, w = grid
    x0, y0, x1, y1 = box
    cy = (np.arange(h) + 0.5) * STRIDE
    cx = (np.arange(w) + 0.5) * STRIDE
    yy, xx = np.meshgrid(cy, cx, indexing="ij")
    mx, my = (x0 + x1) / 2, (y0 + y1) / 2
    hx = max((x1 - x0) * BOX_SEED_FRACTION / 2, STRIDE / 2)
    hy = max((y1 - y0) * BOX_SEED_FRACTION / 2, STRIDE / 2)
    seed = (np.abs(xx - mx) <= hx) & (np.abs(yy - my) <= hy)
    if not seed.any():
        seed.flat[_point_cell(mx, my, grid)] = True
    # outside: the cell does not touch the box at all
    cell_x0, cell_y0 = xx - STRIDE / 2, yy - STRIDE / 2
    outside = (cell_x0 + STRIDE <= x0) | (cell_x0 >= x1) | (cell_y0 + STRIDE <= y0) | (cell_y0 >= y1)
    ring = outside & (
        (xx > x0 - 3 * STRIDE) & (xx < x1 + 3 * STRIDE) & (yy > y0 - 3 * STRIDE) & (yy < y1 + 3 * STRIDE)
    )
    far = np.flatnonzero(outside & ~ring)
    neg = np.concatenate([np.flatnonzero(ring), _evenly(far, max(0, MAX_BOX_NEGATIVES - int(ring.sum())))])
    return np.flatnonzero(seed), np.sort(neg)


def references(obj_id: int, ann: ObjectAnnotation, grid: tuple[int, int]) -> ObjectReferences:
    """Reference cells of one object's annotation on an (h, w) = ceil(frame / 8) grid."""
    pos: list[np.ndarray] = []
    neg: list[np.ndarray] = []
    for x, y, label in ann.points:
        (pos if label else neg).append(np.array([_point_cell(x, y, grid)], np.int64))
    for s in ann.scribbles:
        (pos if s.positive else neg).append(_scribble_cells(s.points, grid))
    if ann.box is not None:
        p, n = _box_cells(ann.box, grid)
        pos.append(p)
        neg.append(n)
    if ann.mask is not None:
        frac = _cell_fraction(ann.mask, grid).ravel()
        inside = np.flatnonzero(frac >= 0.5)
        if not len(inside):
            inside = np.flatnonzero(frac > 0)
        pos.append(_evenly(inside, MAX_MASK_REFS))
        neg.append(_evenly(np.flatnonzero(frac == 0), MAX_MASK_REFS))

    def cat(parts: list[np.ndarray]) -> np.ndarray:
        return np.unique(np.concatenate(parts)).astype(np.int64) if parts else np.zeros(0, np.int64)

    p, n = cat(pos), cat(neg)
    n = np.setdiff1d(n, p)  # a cell the user marked both ways counts as positive (the later intent is lost)
    return ObjectReferences(obj_id, p, n, ann.box, ann.uses_retrieval())


def _box_query_cells(box: tuple[float, float, float, float], grid: tuple[int, int]) -> np.ndarray:
    """Cells touching the box, with a margin of one cell (scores outside it are never used)."""
    h, w = grid
    x0, y0, x1, y1 = box
    i0, i1 = max(0, int(y0 // STRIDE) - 1), min(h, int(np.ceil(y1 / STRIDE)) + 1)
    j0, j1 = max(0, int(x0 // STRIDE) - 1), min(w, int(np.ceil(x1 / STRIDE)) + 1)
    ii, jj = np.meshgrid(np.arange(i0, i1), np.arange(j0, j1), indexing="ij")
    return (ii * w + jj).ravel()


def retrieve(
    embeddings: Tensor,
    refs: list[ObjectReferences],
    frame_hw: tuple[int, int],
    threshold: float | None = None,
) -> np.ndarray:
    """Label map from reference cells by nearest-neighbour retrieval.

    Args:
        embeddings: (D, h, w) pixel embeddings of the frame, h = ceil(H / 8), w = ceil(W / 8).
        refs: the reference cells of every annotated object (objects with ``retrieve=False`` only lend
            their positives as negatives of the others).
        frame_hw: (H, W) of the frame.
        threshold: distance beyond which a cell is not an object (None: estimated from the frame).
    Returns:
        (H, W) int32 object ids (0 = background); objects with ``retrieve=False`` are left at 0.
    """
    d, h, w = embeddings.shape
    active = [r for r in refs if r.retrieve and len(r.pos)]
    height, width = frame_hw
    if not active:
        return np.zeros(frame_hw, np.int32)
    flat = embeddings.reshape(d, h * w).t().float().contiguous()  # (HW, D)
    sqn = (flat * flat).sum(1)

    def min_dist(query: Tensor | None, ref: np.ndarray) -> Tensor:
        """Distance of each query cell (all cells if None) to its closest reference cell."""
        q, qn = (flat, sqn) if query is None else (flat[query], sqn[query])
        r = flat[torch.from_numpy(ref)]
        d2 = torch.addmm((r * r).sum(1)[None], q, r.t(), alpha=-2.0).amin(1) + qn
        return d2.clamp_min_(0).sqrt_()

    score = torch.full((len(active), h * w), _NEG)
    for k, r in enumerate(active):
        query = None if r.box is None else torch.from_numpy(_box_query_cells(r.box, (h, w)))
        d_pos = min_dist(query, r.pos)
        others = [o.pos for o in refs if o.obj_id != r.obj_id and len(o.pos)]
        neg = np.setdiff1d(np.unique(np.concatenate([r.neg, *others])), r.pos)
        d_neg = min_dist(query, neg) if len(neg) else torch.full_like(d_pos, float("inf"))
        if r.box is None:
            if threshold is None:
                tau = UNTRAINED_THRESHOLD_FACTOR * float(d_pos.median())
            else:
                tau = threshold * (1.0 + FEW_REFERENCES_SLACK / float(np.sqrt(len(r.pos))))
            d_neg = d_neg.clamp(max=tau)
        s = d_neg - d_pos
        if r.box is not None and threshold is not None:
            s = torch.maximum(s, d_neg - BOX_BACKGROUND_FACTOR * threshold)
        s = torch.nan_to_num(s, nan=_NEG, posinf=-_NEG, neginf=_NEG)
        if query is None:
            score[k] = s
        else:
            score[k, query] = s
    up = F.interpolate(
        score.view(1, -1, h, w), size=(h * STRIDE, w * STRIDE), mode="bilinear", align_corners=False
    )[0]
    up = up[:, :height, :width]
    for k, r in enumerate(active):
        if r.box is not None:
            x0, y0, x1, y1 = r.box
            keep = torch.zeros((height, width), dtype=torch.bool)
            keep[int(np.floor(y0)) : int(np.ceil(y1)), int(np.floor(x0)) : int(np.ceil(x1))] = True
            up[k].masked_fill_(~keep, _NEG)
    lut = np.array([r.obj_id for r in active], dtype=np.int32)
    if len(active) == 1:
        return np.where(up[0].numpy() > 0, lut[0], 0).astype(np.int32)
    best, arg = up.max(0)
    return np.where(best.numpy() > 0, lut[arg.numpy()], 0).astype(np.int32)
