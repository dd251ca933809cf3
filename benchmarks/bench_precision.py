"""Every precision side by side on one CPU: ms per frame of the session step and label agreement with fp32.

Runs memvos-lite (shipped weights) on the first ``--frames`` frames of a real 854x480 DAVIS clip, one session
per precision, in interleaved rounds (this VM's speed drifts: only ratios within one run are compared), and
prints the median step time of each and the share of pixels whose label equals the exact fp32 path's.

    .venv/bin/python benchmarks/bench_precision.py [--frames 30] [--rounds 3] [--seq car-turn]
    # an AVX2-only CPU emulated on a newer one (BENCHMARKS.md says how far this matches a real one):
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 .venv/bin/python benchmarks/bench_precision.py

Reads ``../shared/data/davis16-train`` beside the checkout (skips with a message where it is absent).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "davis16-train"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seq", default="car-turn")
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--precisions", nargs="+", default=None, help="default: every one this CPU runs")
    ap.add_argument("--size", type=int, default=0, help="processing size (0: the model's default)")
    ap.add_argument("--onnxruntime", action="store_true", help="also time the onnxruntime backend")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if not DATA.is_dir():
        print(f"skipped: {DATA} not found", file=sys.stderr)
        return 0
    import numpy as np
    import torch

    from memvos.benchmark import machine_info
    from memvos.errors import InputError
    from memvos.inference.session import InferenceSession
    from memvos.io.frames import open_frames
    from memvos.io.layout import resolve_dir
    from memvos.io.masks import read_mask
    from memvos.models.registry import load_model
    from memvos.precision import cpu_capability, resolve_precision

    src = open_frames(resolve_dir(DATA / "JPEGImages" / args.seq))
    frames = [f for _, f in zip(range(args.frames), (rgb for _, rgb in src), strict=False)]
    mask = read_mask(resolve_dir(DATA / "Annotations" / args.seq) / f"{src.names[0]}.png")
    model = load_model("memvos-lite")
    wanted = args.precisions or ["fp32", "fp32-fast", "bf16", "auto"]
    precisions = []
    for p in wanted:
        try:
            resolve_precision(p, torch.device("cpu"))
            precisions.append(p)
        except InputError as exc:
            print(f"{p}: refused here ({exc})")
    kwargs = {} if args.size == 0 else {"size": args.size}
    models = {p: model for p in precisions}
    if args.onnxruntime:
        from memvos.inference.backends import onnx_model

        models["onnxruntime"] = onnx_model("memvos-lite", None)
        precisions.append("onnxruntime")
    times: dict[str, list[float]] = {p: [] for p in precisions}
    labels: dict[str, list[np.ndarray]] = {}
    resolved = {}
    for _ in range(args.rounds):
        for p in precisions:
            prec = "fp32-fast" if p == "onnxruntime" else p
            session = InferenceSession(models[p], precision=prec, **kwargs)
            resolved[p] = session.precision
            out = []
            step_ms = []
            for t, frame in enumerate(frames):
                t0 = time.perf_counter()
                r = session.step(frame, mask if t == 0 else None)
                step_ms.append(1000 * (time.perf_counter() - t0))
                out.append(r.labels)
            times[p].append(statistics.median(step_ms[5:]))  # after memory and caches warm up
            labels[p] = out
    ref = labels.get("fp32")
    report = {"machine": machine_info(), "capability": cpu_capability(), "seq": args.seq, "rows": {}}
    print(
        f"CPU capability {cpu_capability()}, {report['machine']['cpu']}, {args.frames} frames of {args.seq}"
    )
    base = statistics.median(times["fp32"]) if "fp32" in times else None
    for p in precisions:
        ms = statistics.median(times[p])
        agree = None
        if ref is not None:
            agree = float(np.mean([np.mean(a == b) for a, b in zip(labels[p], ref, strict=True)]))
        report["rows"][p] = {
            "resolved": resolved[p],
            "ms_per_step": round(ms, 1),
            "rounds_ms": times[p],
            "agreement_with_fp32": agree,
        }
        speed = f"{base / ms:.2f}x fp32" if base else ""
        print(
            f"{p:>10} ({resolved[p]:>9}): {ms:7.1f} ms/step  {speed:>12}  labels = fp32 on "
            f"{100 * agree:.3f} % of pixels"
            if agree is not None
            else f"{p}: {ms:.1f} ms"
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
