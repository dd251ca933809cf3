"""Quality of click-initialised segmentation on DAVIS-layout sequences (a simulated user).

For each sequence the robot annotates the first frame of object 1 (DAVIS 2016: the foreground): the first
click is positive, at the ground truth's most interior pixel (largest distance to the boundary); each next
click goes to the most interior pixel of the largest error region (positive in a miss, negative in a false
positive), like the DAVIS interactive robot. It prints the first-frame IoU after each click and after a box
(the ground truth's bounding box), then propagates the mask of the last click through the video and scores
it with the DAVIS metrics (J&F, first and last frame excluded).

    .venv/bin/python benchmarks/bench_clicks.py ../shared/data/davis16-train \
        --sequences bmx-bumps car-turn dance-jump kite-walk paragliding rhino --clicks 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import cv2
import numpy as np

from memvos.evaluation import evaluate
from memvos.interactive.video import InteractiveVideo
from memvos.io.layout import resolve_dir
from memvos.io.masks import read_mask
from memvos.io.writers import write_palette_png
from memvos.models.registry import load_model


def interior_point(region: np.ndarray) -> tuple[int, int]:
    """(x, y) of the pixel of ``region`` (H, W) bool farthest from its boundary."""
    dist = cv2.distanceTransform(np.pad(region, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(x), int(y)


def next_click(pred: np.ndarray, gt: np.ndarray) -> tuple[tuple[int, int], int]:
    """The robot's next click: inside the largest error component; label 1 for a miss, 0 for a false hit."""
    best, best_area = None, 0
    for err, label in ((gt & ~pred, 1), (pred & ~gt, 0)):
        n, comp, stats, _ = cv2.connectedComponentsWithStats(err.astype(np.uint8), connectivity=8)
        for c in range(1, n):
            if stats[c, cv2.CC_STAT_AREA] > best_area:
                best_area, best = int(stats[c, cv2.CC_STAT_AREA]), (comp == c, label)
    if best is None:
        return interior_point(gt), 1
    return interior_point(best[0]), best[1]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return 1.0 if union == 0 else float((a & b).sum() / union)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path, help="DAVIS-layout dataset (JPEGImages/, Annotations/)")
    ap.add_argument("--sequences", nargs="+", required=True)
    ap.add_argument("--clicks", type=int, default=3)
    ap.add_argument("--no-propagate", action="store_true")
    ap.add_argument("--weights", type=Path, help="memvos-lite weights (default: the shipped ones)")
    args = ap.parse_args()

    model = load_model("memvos-lite", args.weights)
    per_click: list[list[float]] = [[] for _ in range(args.clicks)]
    boxes: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "results"
        for seq in args.sequences:
            frames_dir = resolve_dir(args.root / "JPEGImages" / seq)  # a sequence may be a link file
            ann = sorted(resolve_dir(args.root / "Annotations" / seq).glob("*.png"))
            iv = InteractiveVideo(model).init_state(frames_dir)
            gt = read_mask(ann[0], iv.frame_hw) > 0
            obj = iv.add_object("object").id
            ys, xs = np.nonzero(gt)
            _, _, lab = iv.add_new_points_or_box(0, obj, box=[xs.min(), ys.min(), xs.max(), ys.max()])
            boxes.append(iou(lab == obj, gt))
            iv.clear_annotations(0, obj)
            row = []
            pred = np.zeros_like(gt)
            for k in range(args.clicks):
                (x, y), label = next_click(pred, gt) if k else (interior_point(gt), 1)
                _, _, lab = iv.add_new_points_or_box(0, obj, points=[[x, y]], labels=[label])
                pred = lab == obj
                per_click[k].append(iou(pred, gt))
                row.append(per_click[k][-1])
            print(f"{seq:16s} box {boxes[-1]:.3f}  clicks " + " ".join(f"{v:.3f}" for v in row), flush=True)
            if not args.no_propagate:
                (out / seq).mkdir(parents=True)
                for i, _ids, labels in iv.propagate_in_video(0):
                    write_palette_png(out / seq / f"{iv.frames.names[i]}.png", labels)
            iv.close()
        print(
            f"mean first-frame IoU: box {statistics.mean(boxes):.3f}, "
            + ", ".join(f"{k + 1} click(s) {statistics.mean(v):.3f}" for k, v in enumerate(per_click))
        )
        if not args.no_propagate:
            result = evaluate(out, args.root / "Annotations", args.sequences, year=2016)
            row = result.global_row().as_dict()
            print(
                f"propagated from {args.clicks} click(s): J&F {row['J&F-Mean']:.3f} "
                f"(J {row['J-Mean']:.3f}, F {row['F-Mean']:.3f})"
            )


if __name__ == "__main__":
    main()
