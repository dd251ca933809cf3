"""Loading weight files strictly, with errors that name the keys that do not fit."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn

from memvos.errors import WeightsError

logger = logging.getLogger(__name__)

_WRAPPER_KEYS = ("state_dict", "model", "network")
_MAX_LISTED = 6


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict (``torch.load`` with ``weights_only=True`` on the CPU).

    Accepts the DataParallel ``module.`` prefix and checkpoints that wrap the state dict under
    ``state_dict`` / ``model`` / ``network``.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file for the user
        # torch's messages span many lines (and advise weights_only=False): keep a one-line gist
        lines = str(exc).strip().splitlines()
        detail = lines[0] if lines else ""
        if detail.startswith("Weights only load failed"):
            detail = "not a PyTorch state dict of tensors"
        raise WeightsError(f"cannot read weights file {path}: {type(exc).__name__}: {detail}") from None
    for key in _WRAPPER_KEYS:
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def fp16_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Floating tensors as contiguous fp16 on the CPU (the shipped weights' format), others unchanged."""
    return {
        k: (v.half() if v.is_floating_point() else v).detach().cpu().contiguous() for k, v in state.items()
    }


def save_weights(obj: object, path: str | Path) -> Path:
    """``torch.save`` atomically (a temporary file beside ``path``, then a rename): complete or absent."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)
    return path


def _listed(keys: list[str]) -> str:
    more = f" (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
    return ", ".join(keys[:_MAX_LISTED]) + more


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str = "weights") -> None:
    """Load ``state`` into ``model`` strictly; only missing ``num_batches_tracked`` buffers are tolerated.

    Raises:
        WeightsError: naming the missing, unexpected and wrongly shaped keys.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {_listed(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_listed(unexpected)}")
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} keys with the wrong shape: {_listed(wrong_shape)}")
    if problems:
        raise WeightsError(
            f"{source} does not fit model {type(model).__name__} (wrong layout?): " + "; ".join(problems)
        )
    filled = {k: state.get(k, expected[k]) for k in expected}
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in filled.items()}, strict=True)
    logger.debug("loaded %d tensors from %s", len(state), source)
