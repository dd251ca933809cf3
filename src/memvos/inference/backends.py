"""Inference backends: torch, or the model's exported ONNX graphs run by onnxruntime.

* ``torch``: the model as it is (every precision; the only backend of ``--precision fp32``, the exact path).
* ``onnxruntime``: the per-frame graphs of ``memvos export`` (float32), exported once per weights file into
  the cache folder (``$MEMVOS_CACHE``, default ``~/.cache/memvos``) and run by onnxruntime's CPU provider;
  the memory read stays memvos's (:class:`memvos.export.OnnxModel`).
* ``auto``: torch where onnxruntime is not installed, on CUDA, and for an explicit ``--precision`` other
  than ``fp32-fast`` (``fp32`` is the exact torch path; bf16/fp16 are torch's); otherwise both are
  *measured* on a synthetic frame of the video's processing size (a few steps each, after warm-up) and
  onnxruntime is kept only when it is at least 10 % faster. The choice is cached per CPU capability,
  weights, precision and frame size, so each input size is measured once per machine (``memvos -v`` logs
  the figures and the choice).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from memvos.errors import InputError
from memvos.inference.session import InferenceSession, processing_hw, resolve_device
from memvos.io.atomic import atomic_write_text
from memvos.io.records import sha256_file
from memvos.models.base import MemoryNetwork
from memvos.precision import cpu_capability, resolve_precision

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnxruntime")
#: Steps of each backend timed by ``auto`` (after one warm-up step that fills the memory).
MEASURE_STEPS = 3
_CHOICES_FILE = "backend-choices.json"
#: onnxruntime must measure this much faster to be chosen (the measurement is short; this VM is noisy).
ORT_MARGIN = 1.1


def cache_dir() -> Path:
    """memvos's cache folder: ``$MEMVOS_CACHE`` or ``~/.cache/memvos``."""
    return Path(os.environ.get("MEMVOS_CACHE") or Path.home() / ".cache" / "memvos")


def onnxruntime_available() -> bool:
    from memvos.export import onnxruntime_or_none

    return onnxruntime_or_none() is not None


def onnx_model(model_name: str, weights: str | Path | None) -> MemoryNetwork:
    """The exported graphs of ``model_name`` with ``weights`` (None: shipped), exported on first use."""
    from memvos.export import MANIFEST_NAME, OnnxModel, export_model
    from memvos.models.registry import shipped_weights_path

    path = Path(weights) if weights is not None else shipped_weights_path(model_name)
    if path is None:
        raise InputError(f"model {model_name} ships without weights; pass --weights FILE")
    folder = cache_dir() / "onnx" / f"{model_name}-{sha256_file(path)[:16]}"
    if not (folder / MANIFEST_NAME).is_file():
        logger.info("exporting %s to ONNX for onnxruntime (once): %s", model_name, folder)
        export_model(model_name, weights, folder, overwrite=True)
    return OnnxModel(folder)


def _synthetic_clip(hw: tuple[int, int]) -> tuple[list[np.ndarray], np.ndarray]:
    """A few noise frames of size ``hw`` and a one-object blob mask: what a step costs, not what it sees."""
    rng = np.random.default_rng(0)
    h, w = hw
    base = (rng.random((h, w, 3)) * 255).astype(np.uint8)
    frames = [np.roll(base, 4 * i, axis=1) for i in range(MEASURE_STEPS + 2)]
    mask = np.zeros((h, w), np.int32)
    mask[h // 4 : h // 2, w // 4 : w // 2] = 1
    return frames, mask


def time_step(make_session, hw: tuple[int, int]) -> float:
    """Median seconds of a session step at ``hw`` (after warm-up), one object."""
    frames, mask = _synthetic_clip(hw)
    session = make_session()
    times = []
    for t, frame in enumerate(frames):
        t0 = time.perf_counter()
        session.step(frame, mask if t == 0 else None)
        times.append(time.perf_counter() - t0)
    return float(np.median(times[2:]))


def _read_choices() -> dict:
    try:
        data = json.loads((cache_dir() / _CHOICES_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _remember(key: str, value: dict) -> None:
    choices = _read_choices()
    choices[key] = value
    try:
        cache_dir().mkdir(parents=True, exist_ok=True)
        atomic_write_text(cache_dir() / _CHOICES_FILE, json.dumps(choices, indent=1, sort_keys=True))
    except OSError as exc:  # a read-only home is no reason to fail: measure again next time
        logger.debug("backend choice not cached: %s", exc)


def choose_backend(
    backend: str,
    model: MemoryNetwork,
    *,
    model_name: str,
    weights: str | Path | None,
    precision: str,
    device: str,
    frame_hw: tuple[int, int] | None,
    session_kwargs: dict,
) -> tuple[MemoryNetwork, str, str]:
    """(network, backend, precision) a session should run with.

    Raises:
        InputError: an unknown backend, onnxruntime asked for but not installed, or asked for together with
            the exact ``--precision fp32`` or a GPU.
    """
    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r} (use one of {', '.join(BACKENDS)})")
    dev = resolve_device(device)
    resolved = resolve_precision(precision, dev)
    if backend == "torch":
        return model, "torch", precision
    if backend == "onnxruntime":
        if resolved == "fp32":
            raise InputError(
                "--precision fp32 is the exact torch path; use --backend torch, or --precision "
                "auto / fp32-fast with onnxruntime"
            )
        if dev.type != "cpu":
            raise InputError("--backend onnxruntime runs on the CPU; use --device cpu")
        if not onnxruntime_available():
            raise InputError(
                "--backend onnxruntime needs onnxruntime: pip install -c constraints.txt 'memvos[onnx]'"
            )
        return onnx_model(model_name, weights), "onnxruntime", "fp32-fast"
    # auto: an explicitly asked precision other than fp32-fast is torch's (onnxruntime runs float32 only)
    if precision not in ("auto", "fp32-fast") or resolved == "fp32" or dev.type != "cpu" or frame_hw is None:
        return model, "torch", precision
    if not onnxruntime_available():
        logger.debug("backend torch (onnxruntime is not installed)")
        return model, "torch", precision
    from memvos.models.registry import shipped_weights_path

    wpath = Path(weights) if weights is not None else shipped_weights_path(model_name)
    size = session_kwargs.get("size", model.default_size)
    hw = processing_hw(*frame_hw, size)
    key = f"{cpu_capability()}|{model_name}|{sha256_file(wpath)[:16]}|{resolved}|{hw[0]}x{hw[1]}"
    known = _read_choices().get(key)
    if known is None:
        onnx = onnx_model(model_name, weights)
        kw = {k: v for k, v in session_kwargs.items() if k != "precision"}
        t_torch = time_step(lambda: InferenceSession(model, precision=precision, **kw), frame_hw)
        t_ort = time_step(lambda: InferenceSession(onnx, precision="fp32-fast", **kw), frame_hw)
        known = {
            "backend": "onnxruntime" if t_ort * ORT_MARGIN < t_torch else "torch",
            "torch_ms": round(1000 * t_torch, 1),
            "onnxruntime_ms": round(1000 * t_ort, 1),
        }
        _remember(key, known)
    logger.info(
        "backend %s for %s at %dx%d on a %s CPU (step: torch %.1f ms, onnxruntime %.1f ms)",
        known["backend"],
        resolved,
        hw[1],
        hw[0],
        cpu_capability(),
        known["torch_ms"],
        known["onnxruntime_ms"],
    )
    if known["backend"] == "onnxruntime":
        return onnx_model(model_name, weights), "onnxruntime", "fp32-fast"
    return model, "torch", precision
