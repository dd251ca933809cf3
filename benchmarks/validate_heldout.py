"""The project's held-out validation of memvos-lite weights (issue 13; MODEL_CARD.md "Validation").

Two held-out sets, both from ``../shared/data`` beside the checkout (never trained on):

* **davis16-heldout**: 8 DAVIS 2016 *train* sequences at their original 854x480, DAVIS 2016 protocol,
  first-frame mask only: bmx-bumps (fast motion, occlusion), breakdance-flare (a dancer in front of a
  crowd of people), car-turn, dance-jump (people in the background), kite-walk and paragliding (thin lines,
  small objects), motocross-bumps (fast motion, small), rhino. Six of them were the held-out set of 0.2.x;
  breakdance-flare and motocross-bumps were in 0.2.1's training set at 240p.
* **schoolgirls-late**: frames 50-79 of DAVIS 2017 *schoolgirls* (7 similar-looking people, 432x240),
  DAVIS 2017 protocol, the mask of frame 50 given; training uses frames 0-44 only.

Each set is segmented at every ``--sizes`` entry (``0``: the model's default size) with the given weights
and the default session settings, and scored with memvos's evaluator (identical to the official one).

    .venv/bin/python benchmarks/validate_heldout.py [--weights FILE] [--sizes 0 288] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DAVIS16_HELDOUT = (
    "bmx-bumps",
    "breakdance-flare",
    "car-turn",
    "dance-jump",
    "kite-walk",
    "motocross-bumps",
    "paragliding",
    "rhino",
)
SCHOOLGIRLS_FIRST, SCHOOLGIRLS_STOP = 50, 80


def schoolgirls_view(work: Path) -> Path:
    """A DAVIS-layout folder of symlinks to frames 50-79 of schoolgirls (first mask: frame 50)."""
    from memvos.io.frames import natural_key

    src = SHARED / "davis17-schoolgirls-240p"
    view = work / "schoolgirls-late"
    frames = sorted((src / "JPEGImages" / "schoolgirls").iterdir(), key=lambda p: natural_key(p.name))
    frames = frames[SCHOOLGIRLS_FIRST:SCHOOLGIRLS_STOP]
    for sub in ("JPEGImages", "Annotations", "GT"):
        (view / sub / "schoolgirls").mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(frames):
        (view / "JPEGImages" / "schoolgirls" / f.name).symlink_to(f.resolve())
        mask = (src / "Annotations" / "schoolgirls" / f"{f.stem}.png").resolve()
        (view / "GT" / "schoolgirls" / mask.name).symlink_to(mask)
        if i == 0:
            (view / "Annotations" / "schoolgirls" / mask.name).symlink_to(mask)
    return view


def run_set(
    model,
    root: Path,
    gt: Path,
    sequences: list[str],
    year: int,
    size: int,
    out: Path,
    session: dict | None = None,
) -> dict:
    from memvos.evaluation import evaluate
    from memvos.inference.dataset import run_dataset
    from memvos.inference.session import InferenceSession

    kwargs = dict(session or {})
    if size != 0:
        kwargs["size"] = size
    t0 = time.monotonic()
    run_dataset(
        lambda: InferenceSession(model, **kwargs),
        root,
        out,
        sequences=sequences,
        resume=False,
        progress=False,
    )
    seconds = time.monotonic() - t0
    result = evaluate(out, gt, sequences, year=year)
    per_seq = {}
    for seq in sequences:
        row = result.global_row([seq])
        per_seq[seq] = round(100 * row.JF_mean, 1)
    g = result.global_row()
    return {
        "J&F": round(100 * g.JF_mean, 1),
        "J": round(100 * g.J_mean, 1),
        "F": round(100 * g.F_mean, 1),
        "per_sequence": per_seq,
        "seconds": round(seconds, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", type=Path, help="memvos-lite weights (default: the shipped ones)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[0, 288], help="0 = the model's default size")
    ap.add_argument("--out", type=Path, help="write the figures here as JSON")
    ap.add_argument(
        "--session",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an InferenceSession keyword (JSON value), e.g. top_k=30; repeatable",
    )
    ap.add_argument("--sequences", nargs="+", help="only these davis16-heldout sequences")
    ap.add_argument("--sets", nargs="+", default=["davis16-heldout", "schoolgirls-late"])
    args = ap.parse_args(argv)
    if not (SHARED / "davis16-train").is_dir():
        print(f"skipped: {SHARED / 'davis16-train'} not found", file=sys.stderr)
        return 0
    from memvos.benchmark import machine_info
    from memvos.models.registry import load_model
    from memvos.training.config import parse_overrides

    session = parse_overrides(args.session)
    model = load_model("memvos-lite", args.weights)
    report: dict = {"weights": str(args.weights or "shipped"), "session": session, "machine": machine_info()}
    with tempfile.TemporaryDirectory(prefix="memvos-val-") as tmp:
        work = Path(tmp)
        view = schoolgirls_view(work)
        sets = {
            "davis16-heldout": (
                SHARED / "davis16-train",
                SHARED / "davis16-train" / "Annotations",
                list(args.sequences or DAVIS16_HELDOUT),
                2016,
            ),
            "schoolgirls-late": (view, view / "GT", ["schoolgirls"], 2017),
        }
        for name in args.sets:
            root, gt, seqs, year = sets[name]
            for size in args.sizes:
                out = work / f"{name}-{size}"
                res = run_set(model, root, gt, seqs, year, size, out, session)
                report[f"{name}@{size or 'default'}"] = res
                print(
                    f"{name} size={size or 'default'}: J&F {res['J&F']} (J {res['J']}, F {res['F']}) "
                    f"{res['per_sequence']} [{res['seconds']} s]",
                    flush=True,
                )
                shutil.rmtree(out, ignore_errors=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp_out = args.out.with_suffix(".tmp")
        tmp_out.write_text(json.dumps(report, indent=1))
        os.replace(tmp_out, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
