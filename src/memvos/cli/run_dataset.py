"""``memvos run-dataset ROOT --out DIR``: segment a whole DAVIS/YouTube-VOS dataset, then evaluate it."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from memvos.cli.eval_cmd import add_protocol_arguments
from memvos.cli.segment import add_overwrite_argument, add_session_arguments, run_settings
from memvos.errors import InputError

logger = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run-dataset",
        help="segment every sequence of a DAVIS or YouTube-VOS dataset (resumable, sharded), then evaluate",
        description="Segment ROOT/JPEGImages/<seq>/ into DIR/<seq>/<frame>.png. The model gets each "
        "object's mask only on the frame where it first appears in ROOT/Annotations/<seq>/ (dense as in "
        "DAVIS or sparse as in YouTube-VOS); later ground truth is never given. Finished sequences are "
        "marked and skipped when the command is run again. --shard i/n (or torchrun's RANK/WORLD_SIZE) "
        "splits the sequences between processes. When one process covers the run and the annotations are "
        "dense, the results are evaluated (DAVIS J&F) and the official CSV files are written into DIR.",
    )
    p.add_argument("root", type=Path, metavar="ROOT", help="dataset folder with JPEGImages/ and Annotations/")
    p.add_argument("--out", type=Path, required=True, help="output folder (one sub-folder per sequence)")
    p.add_argument("--sequences", nargs="+", metavar="SEQ", help="only these sequences (default: all)")
    p.add_argument(
        "--shard",
        metavar="i/n",
        help="process shard i of n (0-based; default: torchrun's RANK/WORLD_SIZE, else all)",
    )
    p.add_argument("--no-resume", action="store_true", help="segment finished sequences again")
    add_overwrite_argument(p)
    p.add_argument("--no-eval", action="store_true", help="do not evaluate after segmenting")
    add_protocol_arguments(p)
    p.add_argument(
        "--workers", type=int, default=None, metavar="N", help="evaluation processes (default: CPU count)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_session_arguments(p)
    p.set_defaults(func=run)


def _frame_stems(folder: Path, suffixes: tuple[str, ...]) -> set[str]:
    return {p.stem for p in folder.iterdir() if p.suffix.lower() in suffixes and not p.name.startswith(".")}


def sparse_example(root: Path, sequences: list[str]) -> str | None:
    """None if every frame of every sequence has a ground-truth PNG; else a description of the first gap."""
    from memvos.io.frames import IMAGE_SUFFIXES
    from memvos.io.layout import resolve_dir

    for seq in sequences:
        frames = _frame_stems(resolve_dir(root / "JPEGImages" / seq), IMAGE_SUFFIXES)
        ann_dir = resolve_dir(root / "Annotations" / seq)
        annotated = _frame_stems(ann_dir, (".png",)) if ann_dir.is_dir() else set()
        if not frames <= annotated:
            return f"{seq}: {len(frames & annotated)} of {len(frames)} frames annotated"
    return None


def _device_for_rank(device: str) -> str:
    """Under torchrun, each local rank takes its own GPU when the device is auto/cuda."""
    local = os.environ.get("LOCAL_RANK")
    if local is None or device not in ("auto", "cuda"):
        return device
    import torch

    if not torch.cuda.is_available():
        return device
    return f"cuda:{int(local) % torch.cuda.device_count()}"


def run(args: argparse.Namespace) -> int:
    from memvos.cli.segment import session_from_args
    from memvos.inference.dataset import DONE_MARKER, Shard, list_sequences, run_dataset
    from memvos.io.frames import open_frames
    from memvos.io.layout import resolve_dir

    root: Path = args.root
    if not root.is_dir():
        raise InputError(f"dataset folder not found: {root}")
    from memvos.io.paths import check_outputs

    check_outputs(reads=[root, args.weights], out_dirs=[args.out])
    all_seqs = list_sequences(root)
    if not (root / "Annotations").is_dir():
        raise InputError(f"{root} has no Annotations/ folder: the first mask of each object is needed")
    shard = Shard.parse(args.shard)
    args.device = _device_for_rank(args.device)
    first = open_frames(resolve_dir(root / "JPEGImages" / all_seqs[0])) if all_seqs else None
    frame_hw = (first.height, first.width) if first is not None else None  # where --backend auto measures
    session = session_from_args(args, frame_hw=frame_hw)  # loaded once; each sequence: a reset session

    def make_session():
        session.reset()
        return session

    from memvos.io.paths import resolved
    from memvos.io.records import claim_output_folder

    settings = {"command": "run-dataset", "root": str(resolved(root)), **run_settings(args)}
    claim_output_folder(args.out, settings, overwrite=args.overwrite, nested=True, done_marker=DONE_MARKER)
    logger.info(
        "%s: %d sequences, model %s (%s, %s), shard %d/%d -> %s",
        root,
        len(all_seqs),
        args.model,
        session.precision,
        session.device,
        shard.index,
        shard.count,
        args.out,
    )
    start = time.perf_counter()
    done = run_dataset(
        make_session,
        root,
        args.out,
        sequences=args.sequences,
        shard=shard,
        resume=not args.no_resume,
        progress=not args.quiet,
    )
    logger.info("%d sequences finished in %s (%.0f s)", len(done), args.out, time.perf_counter() - start)
    if args.no_eval or not done:
        return 0
    if shard.count > 1:
        logger.info(
            "shard %d/%d done; evaluate once all shards are: memvos eval %s --gt %s",
            shard.index,
            shard.count,
            args.out,
            root / "Annotations",
        )
        return 0
    gap = sparse_example(root, done)
    if gap is not None:
        logger.info("not evaluated: the ground truth is sparse (%s)", gap)
        return 0
    _evaluate(args, root, done)
    return 0


def _evaluate(args: argparse.Namespace, root: Path, sequences: list[str]) -> None:
    from memvos.evaluation import default_workers, evaluate, format_table, write_csvs

    workers = args.workers if args.workers is not None else default_workers()
    result = evaluate(
        args.out,
        root / "Annotations",
        sequences=sequences,
        year=args.year,
        workers=max(1, workers),
        progress=not args.quiet and sys.stderr.isatty(),
    )
    print(format_table(result, args.set_name))
    g_path, s_path = write_csvs(result, args.out, args.set_name)
    logger.info("wrote %s and %s", g_path, s_path)
