"""``memvos bench``: frames per second and time per stage of the real pipeline on synthetic or given video."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from memvos.cli.segment import add_session_arguments
from memvos.errors import InputError, WeightsError

logger = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="measure fps and time per stage (decode, encode, memory read, decode head, write)",
        description="Run the real pipeline (frame decoding thread -> session.step -> PNG writing thread) on "
        "synthetic frames (textured shapes moving over a textured background, rendered on the fly, masks "
        "given on frame 0) or on --source, and report end-to-end fps after the warm-up, ms per stage, peak "
        "RSS, the settings and the machine. Session stages are wall time per frame; decode and write run in "
        "their own threads and are reported as those threads' CPU time per frame.",
    )
    p.add_argument("--height", type=int, default=480, help="synthetic frame height (default 480)")
    p.add_argument("--width", type=int, default=854, help="synthetic frame width (default 854)")
    p.add_argument(
        "--frames",
        type=int,
        default=100,
        help="frames to process (default 100; with --source: at most this many, 0 = all)",
    )
    p.add_argument("--objects", type=int, default=1, help="synthetic objects (default 1)")
    p.add_argument("--source", type=Path, help="time this folder of frames or video file instead")
    p.add_argument(
        "--mask",
        type=Path,
        help="with --source: first-frame mask PNG or folder of masks "
        "(default: --objects ellipses on frame 0)",
    )
    p.add_argument("--warmup", type=int, default=5, help="frames excluded from the measurement (default 5)")
    p.add_argument("--json", type=Path, help="also write the report as JSON to this file")
    p.add_argument("--out", type=Path, help="keep the masks in this folder (default: a temporary folder)")
    p.add_argument(
        "--random-weights",
        action="store_true",
        help="use randomly initialised weights (timing only; printed in the report)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's default)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic video and random weights")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_session_arguments(p)
    p.set_defaults(func=run)


def _session(args: argparse.Namespace):
    """The session of :func:`memvos.cli.segment.session_from_args`, or one on random weights."""
    import torch

    from memvos.cli.segment import session_from_args
    from memvos.models.registry import MODELS, shipped_weights_path

    if not args.random_weights:
        try:
            return session_from_args(args, frame_hw=(args.height, args.width))
        except WeightsError as exc:
            shipped = shipped_weights_path(args.model) if args.model in MODELS else None
            if args.weights is None and (shipped is None or not shipped.is_file()):
                raise WeightsError(
                    f"{exc} (or --random-weights to time the model without trained weights)"
                ) from None
            raise
    if args.weights is not None:
        raise InputError("--random-weights and --weights exclude each other")
    if args.model not in MODELS:
        raise InputError(f"unknown model {args.model!r}; available: {', '.join(sorted(MODELS))}")
    torch.manual_seed(args.seed)
    return session_from_args(args, model=MODELS[args.model].build().eval())


def _count_objects(masks: dict) -> int | None:
    """Distinct object ids in the given in-memory masks (None when they are files)."""
    import numpy as np

    arrays = [m for m in masks.values() if isinstance(m, np.ndarray)]
    if not arrays:
        return None
    return len(set().union(*(np.unique(m).tolist() for m in arrays)) - {0})


def run(args: argparse.Namespace) -> int:
    import torch

    from memvos.benchmark import SyntheticVideo, blob_mask, format_report, run_benchmark

    if args.frames < 0 or (args.source is None and args.frames < 1):
        raise InputError(f"--frames must be at least 1, got {args.frames}")
    if args.warmup < 0:
        raise InputError(f"--warmup must be >= 0, got {args.warmup}")
    if args.mask is not None and args.source is None:
        raise InputError("--mask needs --source (synthetic frames come with their own masks)")
    if args.threads is not None:
        if args.threads < 1:
            raise InputError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.source is None:
        frames = SyntheticVideo(args.height, args.width, args.frames, args.objects, seed=args.seed)
        masks = {frames.names[0]: frames.first_mask()}
        limit = None
    else:
        from memvos.io.frames import open_frames
        from memvos.io.masks import open_masks

        frames = open_frames(args.source)
        if args.mask is not None:
            masks = open_masks(args.mask, frames.names, (frames.height, frames.width))
        else:
            masks = {frames.names[0]: blob_mask(frames.height, frames.width, args.objects)}
        limit = args.frames or None
    session = _session(args)
    if args.random_weights:
        logger.warning(
            "RANDOM WEIGHTS: %s is timed without trained weights; the masks are meaningless", args.model
        )
    report = run_benchmark(
        session, frames, masks, warmup=args.warmup, limit=limit, out_dir=args.out, progress=not args.quiet
    )
    settings = report["settings"]
    assert isinstance(settings, dict)
    settings.update(
        model=args.model,
        weights=None if args.random_weights else str(args.weights or "shipped"),
        random_weights=bool(args.random_weights),
        objects=settings["objects"] or _count_objects(masks),
    )
    print(format_report(report))
    if args.json is not None:
        try:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        except OSError as exc:
            raise InputError(f"cannot write {args.json}: {exc.strerror}") from None
        logger.info("wrote %s", args.json)
    return 0
