"""Precision and CPU-capability rules, one home for inference and training.

Precisions of an :class:`~memvos.inference.session.InferenceSession`:

* ``fp32``: the exact, deterministic reference path (the caller's model, the official STM layout).
* ``fp32-fast``: float32 on a private inference copy (BatchNorms folded, conv + activation fused, the fast
  memory-read layout, subnormals flushed to zero): the fast path of CPUs without native bf16 (AVX2,
  AVX-512 without BF16). Masks agree with ``fp32`` up to float rounding.
* ``bf16``: the fast copy with bf16 weights, bf16 autocast and channels_last: needs oneDNN bf16 kernels.
* ``fp16``: CUDA autocast; on the CPU only where oneDNN has fp16 kernels (AVX512-FP16 / AMX-FP16).
* ``auto``: fp16 on CUDA; on the CPU bf16 where the CPU has native bf16 (AVX512-BF16 or AMX), else
  fp32-fast.

The CPU capability is read from ``/proc/cpuinfo`` flags, capped by what the process may use: torch's
``ATEN_CPU_CAPABILITY`` and oneDNN's ``ONEDNN_MAX_CPU_ISA`` (set them to ``avx2`` / ``AVX2`` to run a newer
CPU as an AVX2-only one).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from typing import Literal

import torch

from memvos.errors import InputError

logger = logging.getLogger(__name__)

Precision = Literal["auto", "fp32", "fp32-fast", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "fp32-fast", "bf16", "fp16")
#: CPU capability levels, lowest first.
CAPABILITIES: tuple[str, ...] = ("DEFAULT", "AVX2", "AVX512", "AVX512-BF16", "AMX")
#: oneDNN's ONEDNN_MAX_CPU_ISA values -> the highest capability they leave usable.
_ONEDNN_ISA_CAP = {
    "SSE41": "DEFAULT",
    "AVX": "DEFAULT",
    "AVX2": "AVX2",
    "AVX2_VNNI": "AVX2",
    "AVX2_VNNI_2": "AVX2",
    "AVX512_CORE": "AVX512",
    "AVX512_CORE_VNNI": "AVX512",
    "AVX512_CORE_BF16": "AVX512-BF16",
    "AVX10_1_512": "AVX512-BF16",
    "AVX512_CORE_FP16": "AVX512-BF16",
    "AVX512_CORE_AMX": "AMX",
    "AVX10_1_512_AMX": "AMX",
    "AVX512_CORE_AMX_FP16": "AMX",
    "AVX10_1_512_AMX_FP16": "AMX",
    "AVX10_2_512_AMX_2": "AMX",
    "ALL": "AMX",
}
_ATEN_CAP = {"default": "DEFAULT", "avx2": "AVX2", "avx512": "AMX", "zvector": "DEFAULT"}


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _hardware_capability(flags: set[str]) -> str:
    if {"amx_bf16", "amx_tile"} <= flags:
        return "AMX"
    if "avx512_bf16" in flags:
        return "AVX512-BF16"
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
        return "AVX512"
    if "avx2" in flags:
        return "AVX2"
    return "DEFAULT"


def _lower(a: str, b: str) -> str:
    return a if CAPABILITIES.index(a) <= CAPABILITIES.index(b) else b


@functools.cache
def cpu_capability() -> str:
    """The CPU's usable SIMD level: one of :data:`CAPABILITIES` (honours the ISA caps, see module doc)."""
    flags = _cpu_flags()
    cap = _hardware_capability(flags) if flags else _torch_capability()
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", os.environ.get("DNNL_MAX_CPU_ISA", "")).strip().upper()
    if isa in _ONEDNN_ISA_CAP:
        cap = _lower(cap, _ONEDNN_ISA_CAP[isa])
    aten = os.environ.get("ATEN_CPU_CAPABILITY", "").strip().lower()
    if aten in _ATEN_CAP:
        cap = _lower(cap, _ATEN_CAP[aten])
    return cap


def _torch_capability() -> str:
    try:
        name = torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        return "DEFAULT"
    return {"AVX2": "AVX2", "AVX512": "AVX512"}.get(name, "DEFAULT")


def cpu_supports_bf16() -> bool:
    """True if the CPU has *native* bf16 (AVX512-BF16 or AMX) and oneDNN's bf16 kernels run on it."""
    return CAPABILITIES.index(cpu_capability()) >= CAPABILITIES.index("AVX512-BF16") and _mkldnn_bf16()


def cpu_runs_bf16() -> bool:
    """True if oneDNN's bf16 kernels run here at all (natively or emulated on AVX-512)."""
    return CAPABILITIES.index(cpu_capability()) >= CAPABILITIES.index("AVX512") and _mkldnn_bf16()


def cpu_runs_fp16() -> bool:
    """True if oneDNN's fp16 kernels run here (AVX512-FP16 or AMX-FP16)."""
    if CAPABILITIES.index(cpu_capability()) < CAPABILITIES.index("AVX512-BF16"):
        return False
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_fp16_supported())
    except (AttributeError, RuntimeError):
        return False


def _mkldnn_bf16() -> bool:
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision a session runs at: ``auto`` resolved, and an explicit one checked against the device.

    Raises:
        InputError: an unknown precision, or one this device cannot run (one line saying what to use).
    """
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r} (use one of {', '.join(PRECISIONS)})")
    if device.type != "cpu":
        return "fp16" if precision == "auto" else precision
    cap = cpu_capability()
    if precision == "auto":
        return "bf16" if cpu_supports_bf16() else "fp32-fast"
    if precision == "bf16" and not cpu_runs_bf16():
        raise InputError(
            f"--precision bf16 needs a CPU with bf16 kernels (AVX-512 or newer; this CPU: {cap}); "
            "use --precision auto (fp32-fast here) or fp32"
        )
    if precision == "bf16" and not cpu_supports_bf16():
        logger.warning("this CPU (%s) has no native bf16: bf16 is emulated and slower than fp32-fast", cap)
    if precision == "fp16" and not cpu_runs_fp16():
        raise InputError(
            f"--precision fp16 on the CPU needs AVX512-FP16 or AMX-FP16 (this CPU: {cap}); "
            "use --precision auto or fp32"
        )
    return precision


def training_precision(precision: str, device: torch.device) -> str:
    """The precision of a training run: ``auto`` is fp16 AMP on CUDA, bf16 on CPUs with native bf16, else
    fp32 (emulated bf16 training measured 35-130 s a batch against 5 s in fp32 on an AVX2-only EPYC)."""
    if precision == "auto":
        if device.type == "cuda":
            return "fp16"
        return "bf16" if cpu_supports_bf16() else "fp32"
    if precision not in ("fp32", "bf16", "fp16"):
        raise InputError(f"unknown training precision {precision!r} (auto, fp32, bf16 or fp16)")
    return precision


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a resolved precision (None: no autocast)."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast for a resolved precision on ``device`` (a no-op for fp32 and fp32-fast)."""
    dtype = autocast_dtype(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def describe_cpu() -> str:
    """One line: the CPU capability seen and whether oneDNN has native bf16 here."""
    return f"{cpu_capability()} (native bf16: {'yes' if cpu_supports_bf16() else 'no'})"
