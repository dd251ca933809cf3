"""Model names -> constructors and shipped weights."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from memvos.errors import MemvosError, WeightsError
from memvos.models.base import MemoryNetwork
from memvos.models.weights import load_weights, read_state_dict

logger = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"


@dataclass(frozen=True)
class ModelSpec:
    """A named model: how to build it and which weights file ships with memvos (if any)."""

    name: str
    build: Callable[[], MemoryNetwork]
    description: str
    shipped_weights: str | None = None


def _build_stm() -> MemoryNetwork:
    from memvos.models.stm import STM

    return STM()


def _build_lite() -> MemoryNetwork:
    from memvos.models.lite import LiteMemoryNetwork

    return LiteMemoryNetwork(pretrained_backbone=False)


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            "memvos-lite",
            _build_lite,
            "default: EfficientNet-Lite0 shared key encoder, trained here",
            "memvos-lite.pth",
        ),
        ModelSpec("stm-r50", _build_stm, "STM with ResNet-50, official layout (bring STM_weights.pth)"),
    )
}
DEFAULT_MODEL = "memvos-lite"


def shipped_weights_path(name: str) -> Path | None:
    spec = MODELS[name]
    return WEIGHTS_DIR / spec.shipped_weights if spec.shipped_weights else None


def load_model(name: str = DEFAULT_MODEL, weights: str | Path | None = None) -> MemoryNetwork:
    """Build model ``name`` and load ``weights`` (default: the weights shipped with memvos).

    Raises:
        MemvosError: unknown model name.
        WeightsError: no weights available, unreadable file, or a layout that does not fit.
    """
    if name not in MODELS:
        raise MemvosError(f"unknown model {name!r}; available: {', '.join(sorted(MODELS))}")
    if weights is None:
        weights = shipped_weights_path(name)
        if weights is None:
            raise WeightsError(f"model {name} ships without weights; pass --weights FILE")
        if not Path(weights).is_file():
            raise WeightsError(f"the shipped weights of {name} are missing ({weights}); pass --weights FILE")
    model = MODELS[name].build()
    load_weights(model, read_state_dict(weights), source=str(weights))
    return model.eval()
