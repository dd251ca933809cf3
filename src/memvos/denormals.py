"""Flush-to-zero for subnormal floats on the CPU threads that run torch's kernels.

The memory read's softmax turns most of its inputs into exp(a - max) values far below 1e-38: subnormal
floats, which x86 cores compute on a slow path. On the development machine (AMD EPYC, AVX512-BF16) they made
the 480p memory read of memvos-lite 1.19-1.39x slower once the memory was full and the whole step 1.06-1.22x
slower (one session, the mode toggled every 10 frames: ``benchmarks/bench_denormals.py``).
``torch.set_flush_denormal(True)`` (the x86 FTZ/DAZ bits) removes that, but only on the calling thread, and
the softmax runs on every OpenMP thread of torch's pool; this module sets it on each of them. The only
numerical change: values below 1.2e-38 become 0 (TensorFlow's CPU thread pools run this way by default).

The mode is scoped: :func:`flushed_denormals` sets it on entry and gives every thread of the team the
calling thread's previous C float environment back on exit, so nothing outside a session's step (training
steps, the caller's own code, fp32 sessions) runs flushed. Entering and leaving costs about 14 us.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
from collections.abc import Iterator

import torch

#: Bytes for a C ``fenv_t`` (32 on x86-64 glibc: the x87 environment and MXCSR).
_FENV_BYTES = 64


@functools.cache
def _openmp_team_call():
    """(GOMP_parallel, fegetenv, fesetenv) from torch's libgomp and libm, or None (another OpenMP runtime,
    or not glibc)."""
    try:
        gomp = ctypes.CDLL("libgomp.so.1", mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
        libm = ctypes.CDLL("libm.so.6")
        parallel = gomp.GOMP_parallel
    except (OSError, AttributeError):  # not loaded (macOS, Windows, LLVM/Intel OpenMP builds)
        return None
    parallel.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
    parallel.restype = None
    return parallel, libm.fegetenv, libm.fesetenv


def _current_env(fegetenv) -> ctypes.Array | None:
    """The calling thread's C float environment (a ``fenv_t`` buffer), or None where it cannot be read."""
    env = ctypes.create_string_buffer(_FENV_BYTES)
    return env if fegetenv(env) == 0 else None


def _set_env_on_team(env: ctypes.Array) -> int:
    """``fesetenv(env)`` on every thread of the calling thread's OpenMP team (the caller included), in C:
    no Python, no GIL, so a busy Python thread cannot delay it. Returns the number of threads."""
    parallel, _, fesetenv = _openmp_team_call()
    threads = torch.get_num_threads()
    parallel(ctypes.cast(fesetenv, ctypes.c_void_p), ctypes.cast(env, ctypes.c_void_p), threads, 0)
    return threads


def set_flush_denormals(on: bool) -> int:
    """Set (or clear) flush-to-zero on this thread and on every thread of its OpenMP team.

    The team's threads get this thread's C float environment. Returns the number of threads set: torch's
    thread count where torch runs on GNU OpenMP, 1 where only the calling thread could be reached, 0 where
    the CPU has no such mode.
    """
    if not torch.set_flush_denormal(on):
        return 0
    team = _openmp_team_call()
    env = None if team is None else _current_env(team[1])
    return 1 if env is None else _set_env_on_team(env)


@contextlib.contextmanager
def flushed_denormals(on: bool = True) -> Iterator[None]:
    """Run the body with flush-to-zero on this thread's team, then restore the thread's previous mode.

    ``on=False``: the body runs in whatever mode the thread is in (nothing is changed). Where the previous
    environment cannot be read (no glibc/GNU OpenMP), flush-to-zero is simply switched off again after.
    """
    if not on:
        yield
        return
    team = _openmp_team_call()
    saved = None if team is None else _current_env(team[1])
    reached = set_flush_denormals(True)
    try:
        yield
    finally:
        if saved is not None:
            _set_env_on_team(saved)
        elif reached:
            torch.set_flush_denormal(False)
