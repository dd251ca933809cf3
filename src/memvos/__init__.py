"""memvos: semi-supervised video object segmentation with space-time memory networks.

The main API is importable from here (lazily: ``import memvos`` loads no torch)::

    import memvos

    session = memvos.InferenceSession(memvos.load_model())          # memvos-lite, shipped weights
    frames = memvos.open_frames("video.mp4")
    first = memvos.read_mask("first.png", (frames.height, frames.width))
"""

from __future__ import annotations

import importlib
from typing import Any

from memvos.errors import InputError, MemvosError, OptionError, WeightsError

__version__ = "0.3.1"

#: Public name -> module that defines it (imported on first use).
_LAZY = {
    "InferenceSession": "memvos.inference.session",
    "StepResult": "memvos.inference.session",
    "load_model": "memvos.models.registry",
    "open_frames": "memvos.io.frames",
    "read_mask": "memvos.io.masks",
    "InteractiveVideo": "memvos.interactive.video",
    "evaluate": "memvos.evaluation",
    "export_model": "memvos.export",
}

__all__ = ["InputError", "MemvosError", "OptionError", "WeightsError", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'memvos' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
