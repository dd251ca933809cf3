"""Loading weight files strictly and safely, with errors that name the keys that do not fit.

Every ``torch.load`` of memvos goes through :func:`load_torch_file`: ``weights_only=True`` (tensors and plain
types only: no code runs from a file) and one-line errors that never advise turning that safety off.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from memvos.errors import WeightsError

logger = logging.getLogger(__name__)

_WRAPPER_KEYS = ("state_dict", "model", "network")
_MAX_LISTED = 6
_MAX_DETAIL = 160
#: Why a file with pickled Python objects (classes, functions: code that would run) is refused.
PYTHON_OBJECTS = "it holds Python objects that memvos will not load"
_CORRUPT = "it is not a PyTorch file, or it is truncated or corrupt"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_GLOBAL = re.compile(r"GLOBAL (\S+) was not an allowed global")


def one_line(text: object, limit: int = _MAX_DETAIL) -> str:
    """``text`` on one line (whitespace collapsed, terminal colour codes dropped), cut to ``limit`` chars."""
    flat = " ".join(_ANSI.sub("", str(text)).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _safe_detail(exc: BaseException) -> str:
    """The gist of ``exc`` on one line, without torch's advice about ``weights_only``."""
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip() and "weights_only" not in ln]
    return f"{type(exc).__name__}: {one_line(lines[0])}" if lines else type(exc).__name__


def load_torch_file(path: str | Path, kind: str = "memvos weights file") -> object:
    """``torch.load`` ``path`` on the CPU with ``weights_only=True``: tensors and plain types only.

    Raises:
        WeightsError: one line naming the file and what is wrong with it (``kind`` names what was expected,
            e.g. "memvos training checkpoint"); torch's advice to disable the safety is never repeated.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4": noise about a bad file
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # the weights-only unpickler refused the content
        text = str(exc)
        found = _GLOBAL.search(text)
        if found or "Unsupported global" in text:
            what = f": {one_line(found.group(1), 60)}" if found else ""
            raise WeightsError(f"{path} is not a {kind} ({PYTHON_OBJECTS}{what})") from None
        raise WeightsError(f"{path} is not a {kind} ({_CORRUPT})") from None
    except OSError as exc:
        raise WeightsError(f"cannot read {path}: {exc.strerror or one_line(exc)}") from None
    except (EOFError, KeyError, ValueError, IndexError):
        raise WeightsError(f"{path} is not a {kind} ({_CORRUPT})") from None
    except RuntimeError as exc:
        if "PytorchStreamReader" in str(exc) or "zip archive" in str(exc):
            raise WeightsError(f"{path} is not a {kind} ({_CORRUPT})") from None
        raise WeightsError(f"cannot read {path} as a {kind}: {_safe_detail(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - any other unpickling failure is a bad file for the user
        raise WeightsError(f"cannot read {path} as a {kind}: {_safe_detail(exc)}") from None


def _listed(keys: list[str]) -> str:
    more = f" (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
    return ", ".join(keys[:_MAX_LISTED]) + more


def _unwrap(obj: object) -> object:
    for key in _WRAPPER_KEYS:
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    return obj


#: (kind, description, key prefixes that identify it) of the weights layouts memvos knows.
_LAYOUTS = (
    ("stm-r50", "an STM checkpoint", ("Encoder_M.", "Encoder_Q.", "KV_M_r4.")),
    ("memvos-lite", "memvos-lite weights", ("backbone.", "mask_encoder.", "key_proj.")),
    ("efficientnet-lite", "EfficientNet-Lite backbone weights", ("_conv_stem.", "_blocks.", "_bn0.")),
)
#: Model class -> its layout kind, and what to do when a file of that kind was given to another model.
_MODEL_KINDS = {"STM": "stm-r50", "LiteMemoryNetwork": "memvos-lite", "EfficientNetLite": "efficientnet-lite"}
_HINTS = {
    "stm-r50": "use --model stm-r50",
    "memvos-lite": "use --model memvos-lite",
    "efficientnet-lite": "a backbone only, not a whole model",
}


def _layout(keys: list[str]) -> tuple[str, str] | None:
    """(kind, description) of a state dict with these keys, if it is a layout memvos knows."""
    names = [k.removeprefix("module.") for k in keys]
    for kind, description, prefixes in _LAYOUTS:
        if sum(any(n.startswith(p) for n in names) for p in prefixes) >= 2:
            return kind, description
    return None


def describe_content(obj: object) -> str:
    """What a loaded file looks like, for error messages ("an STM checkpoint", "pml-lite embeddings", ...)."""
    if not isinstance(obj, dict):
        return f"a {type(obj).__name__}, not a dict"
    fmt = obj.get("format")
    if isinstance(fmt, str) and fmt.startswith("memvos-pml"):
        return "pml-lite embeddings (pixel-embedding weights, for memvos ui --pml-weights)"
    if "iteration" in obj and "torch_rng" in obj:
        stage = obj.get("stage", "memory")
        option = "--pml-weights" if stage == "pml" else "--weights"
        return f"a training checkpoint of the {stage} stage (use {option} RUN/last.pth)"
    state = _unwrap(obj)
    if isinstance(state, dict) and state and all(isinstance(v, torch.Tensor) for v in state.values()):
        keys = [str(k) for k in state]
        layout = _layout(keys)
        return layout[1] if layout else f"a state dict of {len(keys)} tensors ({_listed(keys)})"
    return f"a dict with keys {_listed([str(k) for k in obj])}" if obj else "an empty dict"


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict (``torch.load`` with ``weights_only=True`` on the CPU).

    Accepts the DataParallel ``module.`` prefix and checkpoints that wrap the state dict under
    ``state_dict`` / ``model`` / ``network``.

    Raises:
        WeightsError: missing or unreadable file, Python objects in it, or no state dict of tensors (the
            message says what the file looks like instead).
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    obj = load_torch_file(path)
    state = _unwrap(obj)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(
            f"{path} does not hold a state dict of model weights: it looks like {describe_content(obj)}"
        )
    return {str(k).removeprefix("module."): v for k, v in state.items()}


_PLAIN_LEAVES = (str, bytes, int, float, bool, type(None), torch.Size, torch.dtype)
_PLAIN_CONTAINERS = (dict, OrderedDict, list, tuple)


def check_loadable(obj: object, where: str = "state") -> None:
    """Check that ``obj`` holds only tensors and plain types, which :func:`load_torch_file` reads back.

    Raises:
        TypeError: naming the first other value (a bug: memvos would write a file it refuses to read).
    """
    kind = type(obj)
    if isinstance(obj, torch.Tensor) or kind in _PLAIN_LEAVES:
        return
    if kind not in _PLAIN_CONTAINERS:
        raise TypeError(f"{where} is a {kind.__module__}.{kind.__qualname__}, not a tensor or plain type")
    if isinstance(obj, dict):
        for key, value in obj.items():
            check_loadable(key, f"{where} key {key!r}")
            check_loadable(value, f"{where}[{key!r}]")
    else:
        for i, value in enumerate(obj):
            check_loadable(value, f"{where}[{i}]")


def plain(obj: object) -> object:
    """``obj`` with paths as strings and numpy scalars/arrays as Python values, containers rebuilt (for
    configs and settings stored in checkpoints; tuples stay tuples)."""
    if isinstance(obj, dict):
        return {plain(k): plain(v) for k, v in obj.items()}
    if type(obj) in (list, tuple):
        return type(obj)(plain(v) for v in obj)
    if isinstance(obj, list | tuple | set | frozenset):  # named tuples, sets: lists
        return [plain(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, np.generic | np.ndarray):
        return obj.tolist()
    return obj


def fp16_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Floating tensors as contiguous fp16 on the CPU (the shipped weights' format), others unchanged."""
    return {
        k: (v.half() if v.is_floating_point() else v).detach().cpu().contiguous() for k, v in state.items()
    }


def save_weights(obj: object, path: str | Path) -> Path:
    """``torch.save`` atomically (a temporary file beside ``path``, then a rename): complete or absent.

    ``obj`` must hold only tensors and plain types (see :func:`check_loadable`), so that memvos can read
    it back with ``weights_only=True``.
    """
    from memvos.io.atomic import atomic_write

    check_loadable(obj, "weights")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda fh: torch.save(obj, fh))


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str = "weights") -> None:
    """Load ``state`` into ``model`` strictly; only missing ``num_batches_tracked`` buffers are tolerated.

    Raises:
        WeightsError: naming what the weights look like when they are another model's, and the missing
            (expected), unexpected and wrongly shaped keys.
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
    layout = _layout(list(state)) if missing or unexpected else None
    if layout is not None and layout[0] != _MODEL_KINDS.get(type(model).__name__):
        problems.append(f"it looks like {layout[1]} ({_HINTS[layout[0]]})")
    if missing:
        problems.append(f"{len(missing)} missing keys (expected): {_listed(missing)}")
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
