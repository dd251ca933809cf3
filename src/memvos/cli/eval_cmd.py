"""``memvos eval``: DAVIS J&F evaluation of a results folder (equal to the official DAVIS 2017 evaluator)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from memvos.errors import MemvosError

logger = logging.getLogger(__name__)


def add_protocol_arguments(p: argparse.ArgumentParser) -> None:
    """--year and --set: the evaluation protocol and the CSV names (shared with run-dataset)."""
    p.add_argument(
        "--year",
        type=int,
        choices=(2016, 2017),
        default=2017,
        help="evaluation protocol: 2017 per object (default), 2016 all foreground merged",
    )
    p.add_argument(
        "--set",
        dest="set_name",
        default="val",
        metavar="NAME",
        help="set name used in the CSV file names (default: val)",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``eval`` sub-command."""
    p = subparsers.add_parser(
        "eval",
        help="evaluate predicted masks with the DAVIS J&F protocol",
        description=(
            "Evaluate RESULTS/<seq>/<frame>.png against ANNOTATIONS/<seq>/<frame>.png with the DAVIS "
            "semi-supervised protocol (first and last frame excluded). Prints the global row and one row "
            "per object and writes global_results-<set>.csv and per-sequence_results-<set>.csv."
        ),
    )
    p.add_argument(
        "results", type=Path, metavar="RESULTS", help="folder with one sub-folder of PNGs per sequence"
    )
    p.add_argument("--gt", type=Path, required=True, metavar="ANNOTATIONS", help="ground-truth folder")
    p.add_argument(
        "--sequences",
        nargs="+",
        metavar="SEQ",
        help="sequences to evaluate (default: every sub-folder of RESULTS with PNGs)",
    )
    add_protocol_arguments(p)
    p.add_argument("--out", type=Path, metavar="DIR", help="folder for the CSV files (default: RESULTS)")
    p.add_argument(
        "--json", type=Path, metavar="FILE", help="also write all results (per-frame J and F) as JSON"
    )
    p.add_argument(
        "--workers", type=int, default=None, metavar="N", help="parallel processes (default: CPU count)"
    )
    p.add_argument(
        "--objects",
        choices=("auto", "first-frame", "first-appearance"),
        default="auto",
        help="which objects are scored from which frame (default auto; see docs/evaluation.md)",
    )
    p.add_argument(
        "--bound-th",
        type=float,
        default=0.008,
        help="F boundary tolerance: fraction of the diagonal, or pixels if >= 1",
    )
    p.add_argument(
        "--t-stability",
        action="store_true",
        help="also compute the approximate DAVIS-2016 temporal stability T",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(out_dir: Path | None, json_path: Path | None) -> None:
    """Refuse output paths that cannot be written before the (long) evaluation starts.

    Raises:
        MemvosError: ``--out`` is a file or in an unwritable folder, ``--json`` is a folder or in an
            unwritable folder. (Failures while writing, e.g. a full disk, are reported by the writers.)
    """
    checks = [("--out", out_dir, True), ("--json", json_path, False)]
    for option, path, is_folder in checks:
        if path is None:
            continue
        if is_folder and path.exists() and not path.is_dir():
            raise MemvosError(f"{option} {path} is a file, not a folder")
        if not is_folder and path.is_dir():
            raise MemvosError(f"{option} {path} is a folder, not a file")
        base = _existing_ancestor(path if is_folder else path.parent)
        if not base.is_dir():
            raise MemvosError(f"{option} {path}: {base} is a file, not a folder")
        if not os.access(base, os.W_OK | os.X_OK):
            raise MemvosError(f"{option} {path}: folder {base} is not writable")


def run(args: argparse.Namespace) -> int:
    """Run the evaluation, print the table, write the CSV (and JSON) files (atomically: see
    :func:`memvos.evaluation.write_csvs`)."""
    from memvos.evaluation import default_workers, evaluate, format_table, write_csvs, write_json
    from memvos.io.paths import check_outputs

    out_dir = args.out if args.out is not None else args.results
    # a missing RESULTS folder is reported by evaluate(), naming it
    check_writable(out_dir if args.out is not None or args.results.is_dir() else None, args.json)
    csvs = [out_dir / f"{kind}_results-{args.set_name}.csv" for kind in ("global", "per-sequence")]
    check_outputs(reads=[args.gt], out_files=[*csvs, args.json], loose_reads=[args.results])
    workers = args.workers if args.workers is not None else default_workers()
    start = time.perf_counter()
    result = evaluate(
        args.results,
        args.gt,
        sequences=args.sequences,
        year=args.year,
        bound_th=args.bound_th,
        object_mode=args.objects,
        temporal_stability=args.t_stability,
        workers=max(1, workers),
        progress=not args.quiet and sys.stderr.isatty(),
    )
    elapsed = time.perf_counter() - start
    print(format_table(result, args.set_name))
    g_path, s_path = write_csvs(result, out_dir, args.set_name)
    logger.info("wrote %s and %s", g_path, s_path)
    if args.json:
        logger.info("wrote %s", write_json(result, args.json))
    logger.info(
        "evaluated %d objects of %d sequences in %.1f s", len(result.objects), len(result.sequences), elapsed
    )
    return 0
