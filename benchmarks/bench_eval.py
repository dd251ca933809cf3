"""Benchmark ``memvos.evaluation.evaluate``: 20 sequences x 70 frames at 854x480 (1,400 frames).

Ground truth and predictions are written as palette PNGs to a temporary folder first (not timed), then the
evaluation is timed. ``--source synthetic`` (default) draws 1-3 moving objects per sequence; ``--source
davis`` reuses the masks of ``../shared/data/davis16-train-480p`` (beside the checkout) with perturbations.

    .venv/bin/python benchmarks/bench_eval.py [--workers N] [--source synthetic|davis]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

H, W = 480, 854
PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0, 0, 0, 128] + [0] * (768 - 15)
DAVIS16 = (
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "davis16-train-480p" / "Annotations"
)


def _save(label: np.ndarray, path: Path) -> None:
    img = Image.fromarray(label.astype(np.uint8), mode="P")
    img.putpalette(PALETTE)
    img.save(path, compress_level=1)


def _synthetic_gt(rng: np.random.Generator, n_frames: int) -> list[np.ndarray]:
    """1-3 moving ellipses (H, W) uint8 label maps; later ids are drawn on top."""
    k = int(rng.integers(1, 4))
    params = []
    for _ in range(k):
        cy, cx = rng.uniform(100, H - 100), rng.uniform(150, W - 150)
        vy, vx = rng.uniform(-2, 2), rng.uniform(-4, 4)
        ay, ax = rng.uniform(30, 90), rng.uniform(40, 140)
        params.append((cy, cx, vy, vx, ay, ax, rng.uniform(0, 180)))
    frames = []
    for t in range(n_frames):
        lab = np.zeros((H, W), np.uint8)
        for obj, (cy, cx, vy, vx, ay, ax, ang) in enumerate(params, start=1):
            center = (int(cx + vx * t), int(cy + vy * t))
            axes = (int(ax * (1 + 0.2 * np.sin(t / 7))), int(ay))
            cv2.ellipse(lab, center, axes, ang + t, 0, 360, obj, -1)
        frames.append(lab)
    return frames


def _davis_gt(index: int, n_frames: int) -> list[np.ndarray]:
    seqs = sorted(p for p in DAVIS16.iterdir() if p.is_dir())
    files = sorted((seqs[index % len(seqs)]).glob("*.png"))
    start = (index // len(seqs)) * 3
    out = []
    for i in range(n_frames):
        arr = np.asarray(Image.open(files[(start + i) % len(files)]).convert("L"))
        out.append((arr > 127).astype(np.uint8))
    return out


def _perturb(rng: np.random.Generator, gt: np.ndarray, t: int) -> np.ndarray:
    """Prediction from GT: a small drift, a morphological change and a few blobs/holes."""
    pred = np.roll(gt, (t // 10, t // 5), axis=(0, 1))
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    pred = cv2.dilate(pred, k) if t % 2 else cv2.erode(pred, k)
    n_obj = int(gt.max())
    for _ in range(2):
        y, x = int(rng.integers(0, H)), int(rng.integers(0, W))
        cv2.circle(pred, (x, y), int(rng.integers(5, 25)), int(rng.integers(0, n_obj + 1)), -1)
    return pred


def make_dataset(root: Path, n_seq: int, n_frames: int, source: str, seed: int = 0) -> tuple[Path, Path]:
    """Write ``root/gt/<seq>/<frame>.png`` and ``root/pred/<seq>/<frame>.png``."""
    rng = np.random.default_rng(seed)
    for s in range(n_seq):
        seq = f"seq{s:02d}"
        gt_frames = _synthetic_gt(rng, n_frames) if source == "synthetic" else _davis_gt(s, n_frames)
        (root / "gt" / seq).mkdir(parents=True)
        (root / "pred" / seq).mkdir(parents=True)
        for t, g in enumerate(gt_frames):
            _save(g, root / "gt" / seq / f"{t:05d}.png")
            _save(_perturb(rng, g, t), root / "pred" / seq / f"{t:05d}.png")
    return root / "pred", root / "gt"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sequences", type=int, default=20)
    ap.add_argument("--frames", type=int, default=70)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--source", choices=("synthetic", "davis"), default="synthetic")
    ap.add_argument(
        "--repeat", type=int, default=1, help="time the evaluation this many times (best is shown)"
    )
    args = ap.parse_args()
    if args.source == "davis" and not DAVIS16.is_dir():
        print(f"--source davis needs {DAVIS16} (absent)", file=sys.stderr)
        return 2

    from memvos.evaluation import evaluate

    with tempfile.TemporaryDirectory(prefix="memvos-bench-eval-") as tmp:
        t0 = time.perf_counter()
        pred, gt = make_dataset(Path(tmp), args.sequences, args.frames, args.source)
        print(f"wrote {args.sequences} x {args.frames} frames at {W}x{H} in {time.perf_counter() - t0:.1f} s")
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            result = evaluate(pred, gt, workers=args.workers)
            times.append(time.perf_counter() - t0)
        g = result.global_row()
        n_frames = args.sequences * args.frames
        best = min(times)
        print(
            f"evaluate: {n_frames} frames, {g.num_objects} objects, workers={args.workers}: "
            f"{best:.2f} s ({n_frames / best:.0f} frames/s); "
            f"J&F={g.JF_mean:.3f} J={g.J_mean:.3f} F={g.F_mean:.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
