"""Latency of a new click in interactive segmentation (retrieval only; the frame's embeddings are cached).

Usage: OMP_NUM_THREADS=2 python benchmarks/bench_interactive.py [--height 480 --width 854 --clicks 20]

Prints the one-off embedding time of a frame and the median / p90 latency of ``add_new_points_or_box``
(clicks, then a box, a scribble) on that frame: the target is <= 50 ms at 854x480 on 2 CPU cores. The
process CPU time per click is printed too: on a machine shared with other jobs the wall time overstates
the cost.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from memvos.interactive.embedding import default_embedder
from memvos.interactive.frames import FrameStore
from memvos.interactive.video import InteractiveVideo
from memvos.io.frames import FrameSource
from memvos.models.lite import LiteMemoryNetwork


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=854)
    ap.add_argument("--clicks", type=int, default=20)
    ap.add_argument("--objects", type=int, default=2)
    args = ap.parse_args()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    h, w = args.height, args.width
    frame = rng.integers(0, 255, size=(1, h, w, 3), dtype=np.uint8)
    model = LiteMemoryNetwork(pretrained_backbone=True).eval()
    iv = InteractiveVideo(model, default_embedder(model)).init_state(
        FrameStore(FrameSource.from_arrays(frame))
    )
    ids = [iv.add_object().id for _ in range(args.objects)]
    t0 = time.perf_counter()
    iv.embedding(0)
    embed_ms = (time.perf_counter() - t0) * 1000
    times, cpu = [], []
    for k in range(args.clicks):
        oid = ids[k % len(ids)]
        x, y = float(rng.uniform(0, w)), float(rng.uniform(0, h))
        t0, c0 = time.perf_counter(), time.process_time()
        iv.add_new_points_or_box(0, oid, points=[[x, y]], labels=[int(k % 3 != 2)])
        times.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
    t0, c0 = time.perf_counter(), time.process_time()
    iv.add_new_points_or_box(0, ids[0], box=[w * 0.2, h * 0.2, w * 0.6, h * 0.7])
    box_ms, box_cpu = (time.perf_counter() - t0) * 1000, (time.process_time() - c0) * 1000
    t0, c0 = time.perf_counter(), time.process_time()
    iv.add_scribble(0, ids[-1], [[w * 0.7, h * 0.3], [w * 0.8, h * 0.5], [w * 0.9, h * 0.6]])
    scr_ms, scr_cpu = (time.perf_counter() - t0) * 1000, (time.process_time() - c0) * 1000
    p90 = sorted(times)[max(0, int(0.9 * len(times)) - 1)]
    head = type(iv.embedder.head).__name__
    print(f"frame {w}x{h}, {args.objects} objects, torch threads {torch.get_num_threads()}")
    print(f"embeddings: {head}, {iv.embedder.out_dim} channels at stride 8")
    print(f"embedding (once per frame): {embed_ms:.1f} ms")
    print(
        f"new click: median {statistics.median(times):.1f} ms, p90 {p90:.1f} ms, max {max(times):.1f} ms "
        f"(CPU time median {statistics.median(cpu):.1f} ms)"
    )
    print(f"box: {box_ms:.1f} ms (CPU {box_cpu:.1f}), scribble: {scr_ms:.1f} ms (CPU {scr_cpu:.1f})")


if __name__ == "__main__":
    main()
