"""What flushing subnormal floats to zero gives (``InferenceSession(flush_denormals=...)``).

One session over a real clip played forward and backward (default 200 frames of DAVIS car-turn at
854x480, shipped weights); the mode is toggled every ``--every`` frames, so both modes run on the same
memory contents and in the same minutes of this noisy VM. Prints the median ms per stage of each mode,
frames after ``--skip`` only (a full memory bank).

    .venv/bin/python benchmarks/bench_denormals.py [--size 288] [--frames 200] [--every 10]

Run it through the allocator the ``memvos`` command uses:
``LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 .venv/bin/python benchmarks/...``.
Reads ``../shared/data/davis16-train-480p`` (skips with a message where it is absent).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from bench_segment import DATA, ping_pong  # this folder's clip helpers (the script's folder is on sys.path)

from memvos.inference.session import InferenceSession
from memvos.io.frames import decode_image_rgb
from memvos.io.masks import read_mask
from memvos.models.registry import load_model
from memvos.timing import StageTimer


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sequence", default="car-turn")
    p.add_argument("--frames", type=int, default=200)
    p.add_argument("--every", type=int, default=10, help="frames per mode before toggling (default 10)")
    p.add_argument("--skip", type=int, default=40, help="frames not counted (default 40)")
    p.add_argument("--size", type=int, default=None, help="processing size (default: the model's)")
    args = p.parse_args()
    folder = DATA / "JPEGImages" / args.sequence
    if not folder.is_dir():
        print(f"skipped: {folder} is absent", file=sys.stderr)
        return 0
    files = ping_pong(sorted(folder.glob("*.jpg")), args.frames)
    by_name = {f: decode_image_rgb(f) for f in sorted(set(files))}
    frames = list(by_name.values())
    first = read_mask(DATA / "Annotations" / args.sequence / f"{files[0].stem}.png", frames[0].shape[:2])
    timer = StageTimer()
    kwargs = {} if args.size is None else {"size": args.size}
    session = InferenceSession(load_model("memvos-lite"), timer=timer, **kwargs)
    rows: dict[bool, list[dict[str, float]]] = {True: [], False: []}
    for i, f in enumerate(files):
        session.flush_denormals = (i // args.every) % 2 == 0
        before = timer.snapshot()
        t0 = time.perf_counter()
        session.step(by_name[f], first if i == 0 else None)
        step = time.perf_counter() - t0
        if i >= args.skip:
            stages = {k: v[0] * 1e3 for k, v in timer.since(before).items()}
            rows[session.flush_denormals].append({"step": step * 1e3, **stages})
    h, w = frames[0].shape[:2]
    print(f"{args.sequence} {w}x{h}, size {session.size}, median ms per frame:")
    for mode, label in ((True, "flushed"), (False, "IEEE   ")):
        keys = rows[mode][0].keys()
        print(label, "  ".join(f"{k} {statistics.median(r[k] for r in rows[mode]):.1f}" for k in keys))
    step = {mode: statistics.median(r["step"] for r in rows[mode]) for mode in rows}
    ratio = step[False] / step[True]
    print(f"step IEEE / flushed = {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
