"""Time ``memvos segment`` end to end the way the speed issue checks it from outside.

Two clips of different lengths are built from the same real 480p frames (played forward and backward,
symlinked into a temporary folder), ``memvos segment`` runs on each in a fresh process, and

    fps = (frames_long - frames_short) / (wall_long - wall_short)

so process start-up, model loading and the first-frame warm-up cancel out. Each length runs ``--repeats``
times; the medians of the wall times are used. Extra arguments after ``--`` go to ``memvos segment``.

    .venv/bin/python benchmarks/bench_segment.py [--sequence car-turn] [--short 40 --long 200] \
        [--repeats 3] [-- --size 288]

Reads ``../shared/data/davis16-train-480p`` beside the checkout (skips with a message where it is absent).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "davis16-train-480p"


def ping_pong(frames: list[Path], n: int) -> list[Path]:
    """``n`` frames of ``frames`` played forward, backward, forward, ... (no frame repeated at the turns)."""
    if len(frames) < 2:
        return frames * n
    cycle = frames + frames[-2:0:-1]
    return [cycle[i % len(cycle)] for i in range(n)]


def build_clip(frames: list[Path], n: int, folder: Path) -> Path:
    folder.mkdir(parents=True)
    for i, src in enumerate(ping_pong(frames, n)):
        (folder / f"{i:05d}{src.suffix}").symlink_to(src.resolve())
    return folder


def split_mask(mask_png: Path, objects: int, out: Path) -> Path:
    """The first-frame mask with its foreground cut into ``objects`` vertical bands (ids 1..N), as a
    palette PNG: a multi-object run on real frames."""
    import numpy as np
    from PIL import Image

    from memvos.io.writers import write_palette_png

    fg = np.asarray(Image.open(mask_png).convert("L")) > 0
    cols = np.nonzero(fg.any(axis=0))[0]
    cuts = np.linspace(cols.min(), cols.max() + 1, objects + 1).astype(int)
    labels = np.zeros(fg.shape, np.uint8)
    for k in range(objects):
        band = np.zeros_like(fg)
        band[:, cuts[k] : cuts[k + 1]] = True
        labels[fg & band] = k + 1
    write_palette_png(out, labels)
    return out


def time_segment(clip: Path, mask: Path, out: Path, extra: list[str]) -> float:
    """Wall seconds of one ``memvos segment`` process."""
    cmd = [sys.executable, "-m", "memvos", "segment", str(clip), "--mask", str(mask), "--out", str(out)]
    cmd += ["--quiet", *extra]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=os.environ.copy())
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA, help="DAVIS-layout folder (default: shared 480p)")
    ap.add_argument("--sequence", default="car-turn")
    ap.add_argument("--short", type=int, default=40, help="frames of the short clip (default 40)")
    ap.add_argument("--long", type=int, default=200, help="frames of the long clip (default 200)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per length (default 3, medians used)")
    ap.add_argument(
        "--objects", type=int, default=1, help="cut the object into N vertical bands, ids 1..N (default 1)"
    )
    ap.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    seq_dir = args.data / "JPEGImages" / args.sequence
    if not seq_dir.is_dir():
        print(f"skipped: {seq_dir} not found (the shared DAVIS data is not beside the checkout)")
        return 0
    frames = sorted(seq_dir.glob("*.jpg"))
    mask = args.data / "Annotations" / args.sequence / f"{frames[0].stem}.png"
    walls: dict[int, list[float]] = {args.short: [], args.long: []}
    with tempfile.TemporaryDirectory(prefix="memvos-bench-segment-") as tmp:
        clips = {n: build_clip(frames, n, Path(tmp) / f"clip{n}") for n in walls}
        if args.objects > 1:
            mask = split_mask(mask, args.objects, Path(tmp) / "mask.png")
        for r in range(args.repeats):
            for n, clip in clips.items():
                walls[n].append(time_segment(clip, mask, Path(tmp) / f"out{n}-{r}", extra))
                print(f"run {r + 1}: {n} frames {walls[n][-1]:.2f} s", flush=True)
    short, long = (statistics.median(walls[n]) for n in (args.short, args.long))
    fps = (args.long - args.short) / (long - short)
    print(
        f"memvos segment {' '.join(extra) or '(defaults)'} on {args.sequence}, {args.objects} object(s): "
        f"{args.short} frames {short:.2f} s, {args.long} frames {long:.2f} s (medians of {args.repeats}) "
        f"-> {fps:.1f} fps"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "sequence": args.sequence,
                    "objects": args.objects,
                    "extra_args": extra,
                    "walls": walls,
                    "fps": fps,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
