"""Sequence and dataset evaluation with the DAVIS semi-supervised protocol (J, F, statistics, global row).

Results equal the official DAVIS 2017 evaluator (``davisvideochallenge/davis2017-evaluation``,
``--task semi-supervised``) to the last bit; see ``docs/evaluation.md`` for the protocol and the two
documented extensions (objects that first appear mid-video, no uint8 wrap of the decay bins).
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
from PIL import Image

from memvos.errors import InputError
from memvos.evaluation.metrics import (
    BOUND_TH,
    boundary_tolerance,
    mask_bbox,
    scores_with_boxes,
    temporal_stability_pair,
)
from memvos.evaluation.statistics import db_statistics, mean_over
from memvos.io.layout import resolve_dir

logger = logging.getLogger(__name__)

ObjectMode = Literal["auto", "first-frame", "first-appearance"]
OBJECT_MODES: tuple[str, ...] = ("auto", "first-frame", "first-appearance")
VOID_LABEL = 255
_GRAY_MODES = {"L", "LA", "1", "I", "I;16", "I;16B", "I;16L"}

__all__ = [
    "EvaluationResult",
    "GlobalRow",
    "OBJECT_MODES",
    "ObjectResult",
    "evaluate",
    "evaluate_sequence",
    "list_frames",
    "read_label_map",
]


# --------------------------------------------------------------------------------------------------
# Result containers
# --------------------------------------------------------------------------------------------------


@dataclass
class ObjectResult:
    """Scores of one object of one sequence (one row of the per-sequence table).

    ``J``/``F`` are float64 (N,) over ``frames`` (the evaluated frame names); ``T`` (N-1,) holds the
    approximate temporal instability of consecutive predicted masks when it was requested.
    """

    sequence: str
    object_id: int
    name: str
    frames: list[str]
    J: np.ndarray
    F: np.ndarray
    J_mean: float
    J_recall: float
    J_decay: float
    F_mean: float
    F_recall: float
    F_decay: float
    T: np.ndarray | None = None
    T_mean: float | None = None

    def stats(self) -> dict[str, float]:
        """The statistics with the official column names (plus ``T-Mean (approx.)`` when computed)."""
        row = {
            "J-Mean": self.J_mean,
            "J-Recall": self.J_recall,
            "J-Decay": self.J_decay,
            "F-Mean": self.F_mean,
            "F-Recall": self.F_recall,
            "F-Decay": self.F_decay,
        }
        if self.T_mean is not None:
            row["T-Mean (approx.)"] = self.T_mean
        return row

    def to_dict(self, per_frame: bool = True) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "sequence": self.sequence, "object": self.object_id}
        d.update(self.stats())
        if per_frame:
            d["frames"] = list(self.frames)
            d["J"] = [float(x) for x in self.J]
            d["F"] = [float(x) for x in self.F]
            if self.T is not None:
                d["T (approx.)"] = [None if math.isnan(x) else float(x) for x in self.T]
        return d


GLOBAL_COLUMNS = ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")


@dataclass
class GlobalRow:
    """Global figures: every column is the mean over objects; J&F-Mean = (J-Mean + F-Mean) / 2."""

    JF_mean: float
    J_mean: float
    J_recall: float
    J_decay: float
    F_mean: float
    F_recall: float
    F_decay: float
    num_objects: int
    T_mean: float | None = None

    def as_dict(self) -> dict[str, float]:
        """Official column names -> values (``T-Mean (approx.)`` appended when computed)."""
        values = (self.JF_mean, self.J_mean, self.J_recall, self.J_decay, self.F_mean, self.F_recall)
        d = dict(zip(GLOBAL_COLUMNS, (*values, self.F_decay), strict=True))
        if self.T_mean is not None:
            d["T-Mean (approx.)"] = self.T_mean
        return d


@dataclass
class EvaluationResult:
    """All per-object results of an evaluation, in sequence order, and their global row."""

    objects: list[ObjectResult]
    year: int = 2017
    bound_th: float = BOUND_TH
    object_mode: str = "auto"
    sequences: list[str] = field(default_factory=list)

    def global_row(self, sequences: Sequence[str] | None = None) -> GlobalRow:
        """Global row over all objects (or the objects of ``sequences``), as ``DAVISEvaluation.evaluate``."""
        objs = self.objects if sequences is None else [o for o in self.objects if o.sequence in sequences]
        j_mean = mean_over([o.J_mean for o in objs])
        f_mean = mean_over([o.F_mean for o in objs])
        t_values = [o.T_mean for o in objs if o.T_mean is not None]
        t_mean = None
        if t_values:
            finite = [t for t in t_values if not math.isnan(t)]
            t_mean = mean_over(finite) if finite else float("nan")
        return GlobalRow(
            JF_mean=(j_mean + f_mean) / 2.0,
            J_mean=j_mean,
            J_recall=mean_over([o.J_recall for o in objs]),
            J_decay=mean_over([o.J_decay for o in objs]),
            F_mean=f_mean,
            F_recall=mean_over([o.F_recall for o in objs]),
            F_decay=mean_over([o.F_decay for o in objs]),
            num_objects=len(objs),
            T_mean=t_mean,
        )

    def to_dict(self, per_frame: bool = True) -> dict[str, Any]:
        """JSON-ready dict: protocol, global row and per-object rows (with per-frame values)."""
        g = self.global_row()
        return {
            "format": "memvos-davis-eval/1",
            "year": self.year,
            "bound_th": self.bound_th,
            "object_mode": self.object_mode,
            "sequences": list(self.sequences),
            "global": {**g.as_dict(), "num_objects": g.num_objects},
            "objects": [o.to_dict(per_frame) for o in self.objects],
        }


# --------------------------------------------------------------------------------------------------
# Reading masks
# --------------------------------------------------------------------------------------------------


def read_label_map(path: str | Path, what: str = "mask") -> tuple[np.ndarray, bool]:
    """Read a label PNG -> (labels (H, W) integer array, is_grayscale).

    Palette images give their indices; grayscale images (``L``, ``LA`` -> first band, ``1``, 16-bit)
    give their values. Colour images raise InputError (they are not label maps).
    """
    p = Path(path)
    try:
        with Image.open(p) as img:
            mode = img.mode
            if mode == "P" or mode == "L":
                arr = np.asarray(img)
            elif mode in ("LA", "PA"):
                arr = np.asarray(img.getchannel(0))
            elif mode == "1":
                arr = np.asarray(img).astype(np.uint8)
            elif mode in _GRAY_MODES:
                arr = np.asarray(img)
            else:
                raise InputError(f"{what} {p} has PNG mode {mode}; expected a palette or grayscale label map")
    except FileNotFoundError:
        raise InputError(f"missing {what} file {p}") from None
    except InputError:
        raise
    except (OSError, ValueError, SyntaxError) as exc:
        raise InputError(f"cannot read {what} {p}: {exc}") from None
    if arr.ndim != 2:
        raise InputError(f"{what} {p} is not a single-channel label map (shape {arr.shape})")
    gray = mode != "P" and mode != "PA"
    return arr, gray


def list_frames(seq_dir: str | Path) -> list[Path]:
    """The ``*.png`` files of a sequence folder, sorted by name."""
    return sorted(p for p in Path(seq_dir).iterdir() if p.suffix.lower() == ".png" and p.is_file())


def _present_labels(arr: np.ndarray) -> np.ndarray:
    """Sorted labels present in a label map (H, W) -> int64 (k,)."""
    if arr.dtype == bool:
        arr = arr.view(np.uint8)
    if arr.dtype == np.uint8:
        hist = cv2.calcHist([np.ascontiguousarray(arr)], [0], None, [256], [0, 256]).ravel()
        return np.flatnonzero(hist)
    return np.unique(arr).astype(np.int64)


# --------------------------------------------------------------------------------------------------
# One sequence
# --------------------------------------------------------------------------------------------------


def _decode_gt(
    frames: Sequence[np.ndarray], gt_binary: bool | None, year: int
) -> tuple[list[np.ndarray], list[set[int]]]:
    """Raw GT label maps -> (decoded label maps, labels present in each).

    255 is void and becomes background (as in the official code), unless the masks are binary (every
    frame holds only {0, 255}, or ``gt_binary``): then 255 is object 1. Year 2016 merges all ids into 1.
    """
    arrays = [np.asarray(f) for f in frames]
    present = [set(_present_labels(f).tolist()) for f in arrays]
    has_void = any(VOID_LABEL in p for p in present)
    if gt_binary is None:
        gt_binary = has_void and all(p <= {0, VOID_LABEL} for p in present)
    if has_void:
        if gt_binary:
            arrays = [(f != 0).astype(np.uint8) for f in arrays]
            present = [{1 if v == VOID_LABEL else v for v in p} for p in present]
        else:
            arrays = [np.where(f == VOID_LABEL, 0, f).astype(f.dtype, copy=False) for f in arrays]
            present = [{0 if v == VOID_LABEL else v for v in p} for p in present]
    if year == 2016:
        arrays = [(f > 0).view(np.uint8) for f in arrays]
        present = [{min(v, 1) for v in p} for p in present]
    return arrays, present


def _object_plan(
    present: Sequence[set[int]], year: int, object_mode: str
) -> tuple[list[tuple[int, int]], str]:
    """Objects to score -> ([(object_id, first evaluated frame index)], resolved object mode)."""
    fg = [p - {0} for p in present]
    first_ids = fg[0]
    all_ids = set().union(*fg)
    if object_mode not in OBJECT_MODES:
        raise ValueError(f"object_mode must be one of {OBJECT_MODES}, got {object_mode!r}")
    mode = object_mode
    if mode == "auto":
        mode = "first-frame" if all_ids <= first_ids else "first-appearance"
    if mode == "first-frame":
        k = max(first_ids) if first_ids else 0
        return [(obj, 1) for obj in range(1, k + 1)], mode
    plan = []
    for obj in sorted(all_ids):
        first = next(t for t, p in enumerate(fg) if obj in p)
        plan.append((obj, first + 1))
    return plan, mode


def evaluate_sequence(
    pred_frames: Sequence[np.ndarray | None] | Callable[[int], np.ndarray],
    gt_frames: Sequence[np.ndarray],
    *,
    sequence: str = "sequence",
    frame_names: Sequence[str] | None = None,
    year: int = 2017,
    bound_th: float = BOUND_TH,
    object_mode: ObjectMode = "auto",
    temporal_stability: bool = False,
    gt_binary: bool | None = None,
    pred_names: Sequence[str] | None = None,
) -> list[ObjectResult]:
    """Score one sequence with the DAVIS semi-supervised protocol.

    Args:
        pred_frames: predicted label maps (H, W), one per GT frame (entries never read - the first and
            last frame - may be None), or a callable ``index -> label map``.
        gt_frames: ground-truth label maps (H, W), pixel = object id; 255 is void (set to 0, as in the
            official code) unless every frame holds only {0, 255} (binary masks: 255 -> object 1);
            ``gt_binary`` forces either reading.
        frame_names: names of the frames (default ``00000``, ``00001``, ...).
        year: 2017 (per object) or 2016 (all foreground merged into one object).
        object_mode: ``first-frame`` = objects 1..K, K = largest id of the first GT frame, all scored on
            frames 1..N-2 (the official protocol); ``first-appearance`` = every id present anywhere in the
            GT, each scored from the frame after its first appearance to N-2; ``auto`` = ``first-frame``
            when every GT id occurs in the first frame, else ``first-appearance``.
        temporal_stability: also compute the approximate T (see ``metrics.temporal_stability_pair``).
        pred_names: names of the predictions for error messages (e.g. file paths).

    Returns:
        One :class:`ObjectResult` per object (objects without any evaluated frame are skipped).
    Raises:
        InputError: a prediction with a label that is not an object, a wrong size or a missing frame.
    """
    if year not in (2016, 2017):
        raise ValueError(f"year must be 2016 or 2017, got {year}")
    n = len(gt_frames)
    names = list(frame_names) if frame_names is not None else [f"{i:05d}" for i in range(n)]
    if len(names) != n:
        raise ValueError("frame_names must have one name per GT frame")
    if n == 0:
        raise InputError(f"sequence {sequence!r} has no ground-truth frames")
    shape = np.asarray(gt_frames[0]).shape
    for name, g in zip(names, gt_frames, strict=True):
        if np.asarray(g).shape != shape or len(shape) != 2:
            raise InputError(
                f"ground-truth frame {name} of {sequence!r} has shape {np.asarray(g).shape}, expected {shape}"
            )
    if not callable(pred_frames) and len(pred_frames) != n:
        raise InputError(
            f"sequence {sequence!r}: {len(pred_frames)} predicted frames for {n} ground-truth frames"
        )
    gt, gt_present = _decode_gt(gt_frames, gt_binary, year)
    plan, mode = _object_plan(gt_present, year, object_mode)
    if not plan:
        logger.warning("sequence %r: no object in the ground truth, nothing to evaluate", sequence)
        return []
    gt_ids = [obj for obj, _ in plan]
    allowed = set(range(1, max(gt_ids) + 1)) if mode == "first-frame" else set(gt_ids)
    max_allowed = max(allowed)
    contiguous = allowed == set(range(1, max_allowed + 1))
    objects_text = f"only {max_allowed} objects" if mode == "first-frame" else f"objects {sorted(gt_ids)}"
    if n < 3:
        logger.warning(
            "sequence %r has %d ground-truth frames: nothing left once the first and last are excluded",
            sequence,
            n,
        )
        return []
    for obj, start in plan:
        if start > n - 2:
            logger.warning("sequence %r: object %d appears too late to be evaluated, skipped", sequence, obj)
    plan = [(obj, start) for obj, start in plan if start <= n - 2]
    if not plan:
        return []
    object_ids = [obj for obj, _ in plan]
    bound_pix = boundary_tolerance(shape, bound_th)
    t_first = min(start for _, start in plan)

    def pred_name(t: int) -> str:
        if pred_names is not None:
            return str(pred_names[t])
        return f"prediction frame {names[t]} of {sequence!r}"

    def load_pred(t: int) -> np.ndarray:
        p = pred_frames(t) if callable(pred_frames) else pred_frames[t]
        if p is None:
            raise InputError(f"missing {pred_name(t)}")
        p = np.asarray(p)
        if p.shape != shape:
            raise InputError(f"{pred_name(t)} has shape {p.shape}, the ground truth has {shape}")
        return p

    j_vals: dict[int, list[float]] = {obj: [] for obj in object_ids}
    f_vals: dict[int, list[float]] = {obj: [] for obj in object_ids}
    t_vals: dict[int, list[float]] = {obj: [] for obj in object_ids}
    prev_mask: dict[int, np.ndarray] = {}
    starts = dict(plan)
    for t in range(t_first, n - 1):
        pred = load_pred(t)
        g = gt[t]
        if year == 2016:
            pred = (pred > 0).view(np.uint8)
        else:
            top = int(pred.max())
            if top > max_allowed or (not contiguous and top > 0):
                present = _present_labels(pred)
                bad = sorted(set(present[present > 0].tolist()) - allowed)
                if bad:
                    raise InputError(
                        f"{pred_name(t)} contains label {bad[-1]} but sequence {sequence!r} has "
                        f"{objects_text} in its ground truth"
                    )
        g_ids = gt_present[t]
        for obj in object_ids:
            if t < starts[obj]:
                continue
            pm = pred == obj
            pbox = mask_bbox(pm)
            if obj in g_ids:
                gm = g == obj
                gbox = mask_bbox(gm)
            else:  # object absent from the GT frame (only read if present in the prediction)
                gm, gbox = (pm if pbox is None else np.zeros(shape, dtype=bool)), None
            j, f = scores_with_boxes(pm, gm, bound_pix, pbox, gbox)
            j_vals[obj].append(j)
            f_vals[obj].append(f)
            if temporal_stability:
                if obj in prev_mask:
                    t_vals[obj].append(temporal_stability_pair(prev_mask[obj], pm))
                prev_mask[obj] = pm

    results = []
    for obj, start in plan:
        j_arr = np.asarray(j_vals[obj], dtype=np.float64)
        f_arr = np.asarray(f_vals[obj], dtype=np.float64)
        jm, jr, jd = db_statistics(j_arr)
        fm, fr, fd = db_statistics(f_arr)
        t_arr = t_mean = None
        if temporal_stability:
            t_arr = np.asarray(t_vals[obj], dtype=np.float64)
            finite = t_arr[~np.isnan(t_arr)]
            t_mean = float(np.mean(finite)) if finite.size else float("nan")
        results.append(
            ObjectResult(
                sequence=sequence,
                object_id=obj,
                name=sequence if year == 2016 else f"{sequence}_{obj}",
                frames=names[start : n - 1],
                J=j_arr,
                F=f_arr,
                J_mean=jm,
                J_recall=jr,
                J_decay=jd,
                F_mean=fm,
                F_recall=fr,
                F_decay=fd,
                T=t_arr,
                T_mean=t_mean,
            )
        )
    return results


# --------------------------------------------------------------------------------------------------
# A results folder
# --------------------------------------------------------------------------------------------------


def _evaluate_sequence_dir(
    results_dir: str,
    gt_dir: str,
    sequence: str,
    year: int,
    bound_th: float,
    object_mode: str,
    temporal_stability: bool,
) -> list[ObjectResult]:
    """Evaluate ``results_dir/<sequence>/*.png`` against ``gt_dir/<sequence>/*.png`` (worker entry point)."""
    gt_seq = resolve_dir(Path(gt_dir) / sequence)
    pred_seq = Path(results_dir) / sequence
    if not pred_seq.is_dir():
        raise InputError(f"missing prediction folder {pred_seq}")
    if not gt_seq.is_dir():
        raise InputError(f"missing ground-truth folder {gt_seq}")
    gt_files = list_frames(gt_seq)
    if not gt_files:
        raise InputError(f"ground-truth folder {gt_seq} has no PNG files")
    raw = [read_label_map(p, "ground-truth mask") for p in gt_files]
    shape = raw[0][0].shape
    for p, (arr, _) in zip(gt_files, raw, strict=True):
        if arr.shape != shape:
            raise InputError(
                f"ground-truth mask {p} is {arr.shape[1]}x{arr.shape[0]}, expected {shape[1]}x{shape[0]}"
            )
    all_gray = all(gray for _, gray in raw)
    frames = [arr for arr, _ in raw]
    gt_binary = False
    if all_gray:
        gt_binary = all(set(_present_labels(a).tolist()) <= {0, VOID_LABEL} for a in frames)
    names = [p.stem for p in gt_files]
    pred_paths = [pred_seq / f"{name}.png" for name in names]

    def load(t: int) -> np.ndarray:
        path = pred_paths[t]
        if not path.is_file():
            raise InputError(f"missing prediction file {path}")
        arr, gray = read_label_map(path, "prediction")
        if arr.shape != shape:
            raise InputError(
                f"prediction {path} is {arr.shape[1]}x{arr.shape[0]} but its ground truth "
                f"{gt_files[t]} is {shape[1]}x{shape[0]}"
            )
        if gray and arr.dtype == np.uint8:
            present = _present_labels(arr)
            if VOID_LABEL in present and set(present.tolist()) <= {0, VOID_LABEL}:
                arr = (arr != 0).astype(np.uint8)  # binary 0/255 prediction -> object 1
        return arr

    return evaluate_sequence(
        load,
        frames,
        sequence=sequence,
        frame_names=names,
        year=year,
        bound_th=bound_th,
        object_mode=object_mode,  # type: ignore[arg-type]
        temporal_stability=temporal_stability,
        gt_binary=gt_binary,
        pred_names=[str(p) for p in pred_paths],
    )


def _worker_init() -> None:
    import cv2

    cv2.setNumThreads(1)


def _find_sequences(results_dir: Path) -> list[str]:
    return sorted(
        d.name
        for d in results_dir.iterdir()
        if d.is_dir() and any(p.suffix.lower() == ".png" for p in d.iterdir())
    )


def evaluate(
    results_dir: str | Path,
    gt_dir: str | Path,
    sequences: Sequence[str] | None = None,
    year: int = 2017,
    *,
    bound_th: float = BOUND_TH,
    object_mode: ObjectMode = "auto",
    temporal_stability: bool = False,
    workers: int = 1,
    progress: bool = False,
) -> EvaluationResult:
    """Evaluate ``results_dir/<seq>/<frame>.png`` against ``gt_dir/<seq>/<frame>.png``.

    ``sequences`` defaults to every sub-folder of ``results_dir`` that holds PNG files (sorted). Frames are
    those of the ground truth; the prediction of each evaluated frame must exist with the same name and
    size. ``workers > 1`` evaluates sequences in parallel processes; ``progress`` shows a tqdm bar on
    stderr. Returns per-object results in sequence order; ``result.global_row()`` is the global row.
    """
    results_dir = Path(results_dir)
    gt_dir = Path(gt_dir)
    if not results_dir.is_dir():
        raise InputError(f"results folder {results_dir} does not exist")
    if not gt_dir.is_dir():
        raise InputError(f"annotations folder {gt_dir} does not exist")
    if year not in (2016, 2017):
        raise InputError(f"year must be 2016 or 2017, got {year}")
    seqs = list(sequences) if sequences else _find_sequences(results_dir)
    if not seqs:
        raise InputError(f"results folder {results_dir} has no sequence folder with PNG files")
    args = (str(results_dir), str(gt_dir))
    opts = (year, bound_th, object_mode, temporal_stability)
    from tqdm import tqdm

    per_seq: dict[str, list[ObjectResult]] = {}
    bar = tqdm(total=len(seqs), unit="seq", desc="eval", file=sys.stderr, disable=not progress, leave=False)
    try:
        workers = max(1, min(int(workers), len(seqs)))
        if workers == 1:
            for seq in seqs:
                bar.set_postfix_str(seq)
                per_seq[seq] = _evaluate_sequence_dir(*args, seq, *opts)
                bar.update()
        else:
            with ProcessPoolExecutor(
                workers, mp_context=get_context("spawn"), initializer=_worker_init
            ) as ex:
                futures = {ex.submit(_evaluate_sequence_dir, *args, seq, *opts): seq for seq in seqs}
                try:
                    for fut in as_completed(futures):
                        per_seq[futures[fut]] = fut.result()
                        bar.update()
                except BaseException:
                    for f in futures:
                        f.cancel()
                    raise
    finally:
        bar.close()
    objects = [o for seq in seqs for o in per_seq[seq]]
    if not objects:
        raise InputError("nothing to evaluate: no object with an evaluated frame in the ground truth")
    return EvaluationResult(
        objects=objects, year=year, bound_th=bound_th, object_mode=object_mode, sequences=seqs
    )


def default_workers() -> int:
    """Number of CPUs available to this process."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)
