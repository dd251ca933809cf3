"""``memvos train --config FILE --out DIR``: train memvos-lite (resumable; torchrun for DDP)."""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

from memvos.errors import MemvosError

logger = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train the default model (static-image and video stages; resumable; DDP under torchrun)",
        description="Train memvos-lite. Re-running with the same --out resumes from its checkpoint. Launch "
        "with `torchrun --nproc_per_node N -m memvos train ...` for data-parallel training.",
    )
    p.add_argument(
        "--config", type=Path, help="JSON config (see configs/); keys of memvos.training.TrainConfig"
    )
    p.add_argument("--out", type=Path, required=True, help="run folder: checkpoint.pth, log.jsonl, last.pth")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (JSON value), repeatable",
    )
    p.add_argument("--iterations", type=int, help="stop after this many iterations in total")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--no-val", action="store_true", help="skip validation on the held-out sequences")
    p.add_argument("--export", type=Path, help="copy the final fp16 weights (best validation if any) here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Train (resuming from ``--out``), then copy the weights to ``--export`` (atomically)."""
    from memvos.io.atomic import atomic_write
    from memvos.training.config import TrainConfig
    from memvos.training.trainer import Trainer
    from memvos.training.validate import davis_validator

    cfg = TrainConfig.from_file(args.config, args.overrides)
    from memvos.io.paths import check_outputs

    check_outputs(
        reads=[args.config, cfg.init_weights, cfg.val_root, *cfg.davis_roots],
        out_dirs=[args.out],
        out_files=[args.export],
    )
    if args.out.exists() and not args.out.is_dir():
        raise MemvosError(f"--out {args.out} is a file, not a run folder")
    if args.export is not None and args.export.is_dir():
        raise MemvosError(f"--export {args.export} is a folder, not a file")
    if cfg.stage == "pml":  # pixel embeddings for interactive segmentation
        from memvos.training.pml import PMLTrainer as Trainer
    elif cfg.stage != "memory":
        raise MemvosError(f"unknown training stage {cfg.stage!r} (memory or pml)")
    trainer = Trainer(cfg, args.out, device=args.device, progress=not args.quiet)
    validate = None
    if cfg.stage == "memory" and not args.no_val and cfg.val_root and cfg.val_sequences:
        validate = davis_validator(
            cfg.val_root, cfg.val_sequences, args.out / "val_predictions", device=str(trainer.device)
        )
    try:
        trainer.train(args.iterations, validate=validate)
    finally:
        trainer.close()
    if args.export and trainer.rank == 0:
        best = args.out / "best.pth"
        src = best if best.is_file() else args.out / "last.pth"
        try:
            args.export.parent.mkdir(parents=True, exist_ok=True)
            with open(src, "rb") as fh:
                atomic_write(args.export, lambda out: shutil.copyfileobj(fh, out))
        except OSError as exc:
            raise MemvosError(f"cannot export {src} to {args.export}: {exc.strerror or exc}") from None
        logger.info("exported %s -> %s", src, args.export)
    return 0
