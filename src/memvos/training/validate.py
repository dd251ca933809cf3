"""Validation during training: segment held-out sequences and score them with the DAVIS evaluator."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from memvos.evaluation import evaluate
from memvos.inference.dataset import run_dataset
from memvos.inference.session import InferenceSession
from memvos.models.base import MemoryNetwork


def davis_validator(
    root: str | Path,
    sequences: list[str],
    work_dir: str | Path,
    year: int = 2016,
    precision: str = "auto",
    device: str = "cpu",
) -> Callable[[MemoryNetwork], dict[str, float]]:
    """A callable(model) -> global DAVIS row (J&F-Mean, J-Mean, ...) on ``sequences`` of ``root``."""
    root, work_dir = Path(root), Path(work_dir)

    def validate(model: MemoryNetwork) -> dict[str, float]:
        if work_dir.exists():
            shutil.rmtree(work_dir)
        run_dataset(
            lambda: InferenceSession(model, precision=precision, device=device),
            root,
            work_dir,
            sequences=sequences,
            resume=False,
            progress=False,
        )
        result = evaluate(work_dir, root / "Annotations", sequences, year=year)
        return {k: round(v, 5) for k, v in result.global_row().as_dict().items()}

    return validate
