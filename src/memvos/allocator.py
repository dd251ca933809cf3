"""The ``memvos`` process sets up a faster memory allocator for itself.

glibc's malloc hands large freed blocks back to the kernel, so every frame pays page faults again when its
activation tensors are re-allocated; on the VMs memvos was measured on these faults cost up to a third of a
frame. tcmalloc keeps the pages. An allocator must be chosen before the process starts, so the command
re-executes itself once, before torch is imported, with ``LD_PRELOAD`` of tcmalloc (Debian/Ubuntu package
``libtcmalloc-minimal4``, which ``scripts/setup.sh`` installs where it can).

``MEMVOS_ALLOCATOR`` chooses: ``auto`` (default: tcmalloc if installed, else glibc as it is), ``tcmalloc``
(an error if it is not installed), ``glibc`` (a tunable keeping blocks under 32 MiB on the heap; it measured
slower than glibc's defaults here, kept for comparison) or ``system`` (leave the process as it is).
Measured with ``benchmarks/bench_segment.py --size 288``, three interleaved rounds: tcmalloc 28.2 / 30.8 /
24.9 fps, glibc defaults 24.8 / 22.3 / 23.7, the tunable 22.5 / 19.4 / 21.7.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

ENV_CHOICE = "MEMVOS_ALLOCATOR"
#: Set in the re-executed process so that it never re-executes again.
ENV_DONE = "MEMVOS_ALLOCATOR_SET"
GLIBC_TUNABLE = "glibc.malloc.mmap_threshold=33554432"
TCMALLOC_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
    "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4",
    "/usr/lib64/libtcmalloc_minimal.so.4",
    "/usr/lib/libtcmalloc_minimal.so.4",
    "/usr/lib/x86_64-linux-gnu/libtcmalloc.so.4",
)


def find_tcmalloc(candidates: Sequence[str] = TCMALLOC_CANDIDATES) -> str | None:
    """Path of an installed tcmalloc shared library, or None."""
    return next((c for c in candidates if Path(c).is_file()), None)


def allocator_env(
    environ: Mapping[str, str], tcmalloc: str | None, platform: str = sys.platform
) -> dict[str, str] | None:
    """The environment to re-execute with, or None when the process should run as it is.

    None when: not Linux, ``MEMVOS_ALLOCATOR=system``, already re-executed, or the allocator asked for is
    already in place (tcmalloc preloaded, or any ``GLIBC_TUNABLES`` set by the user for ``glibc``).
    """
    choice = environ.get(ENV_CHOICE, "auto").strip().lower() or "auto"
    if choice not in ("auto", "tcmalloc", "glibc", "system"):
        raise ValueError(f"{ENV_CHOICE} must be auto, tcmalloc, glibc or system, got {choice!r}")
    if not platform.startswith("linux") or choice == "system" or environ.get(ENV_DONE):
        return None
    preload = environ.get("LD_PRELOAD", "")
    if "tcmalloc" in preload or "jemalloc" in preload:
        return None
    env = dict(environ)
    env[ENV_DONE] = "1"
    if choice in ("auto", "tcmalloc") and tcmalloc is not None:
        env["LD_PRELOAD"] = f"{tcmalloc} {preload}".strip()
        return env
    if choice == "tcmalloc":
        raise ValueError(f"{ENV_CHOICE}=tcmalloc but no tcmalloc library is installed (libtcmalloc-minimal4)")
    if choice == "auto" or environ.get("GLIBC_TUNABLES"):
        return None  # the user's own tunables win
    env["GLIBC_TUNABLES"] = GLIBC_TUNABLE
    return env


def describe(environ: Mapping[str, str] = os.environ) -> str:
    """One line on the allocator this process runs with (for the debug log and benchmark reports)."""
    preload = environ.get("LD_PRELOAD", "")
    if "tcmalloc" in preload:
        return f"tcmalloc ({preload})"
    if "jemalloc" in preload:
        return f"jemalloc ({preload})"
    tunables = environ.get("GLIBC_TUNABLES")
    return f"glibc malloc ({tunables})" if tunables else "glibc malloc (defaults)"


def reexec_with_fast_allocator(argv: Sequence[str] | None = None) -> None:
    """Replace this process by ``python -m memvos ARGV`` with the allocator of :func:`allocator_env`.

    Returns (doing nothing) when no re-execution is needed or possible. Call before importing torch.
    """
    try:
        env = allocator_env(os.environ, find_tcmalloc())
    except ValueError as exc:
        print(f"memvos: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if env is None:
        return
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        os.execve(sys.executable, [sys.executable, "-m", "memvos", *args], env)
    except OSError:  # cannot exec (odd embedding): run with the system allocator
        return
