"""Flush-to-zero for subnormal floats on the CPU threads that run torch's kernels.

The memory read's softmax turns most of its inputs into exp(a - max) values far below 1e-38: subnormal
floats, which x86 cores compute on a slow path. On the development machine (AMD EPYC, AVX512-BF16) they made
the 480p memory read of memvos-lite 1.26-1.39x slower once the memory was full and the whole step 1.06-1.22x
slower (one session, the mode toggled every 10 frames: ``benchmarks/bench_denormals.py``).
``torch.set_flush_denormal(True)`` (the x86 FTZ/DAZ bits) removes that, but only on the calling thread, and
the softmax runs on every OpenMP thread of torch's pool; this module sets it on each of them. The only
numerical change: values below 1.2e-38 become 0 (TensorFlow's CPU thread pools run this way by default).

The state is per thread and stays set. Sessions set it again before every step (microseconds): set only
once, the memory read measured 32.3 instead of 29.9 ms per frame, as if some kernels' threads lost it.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading

import torch

logger = logging.getLogger(__name__)

#: Native ids of the threads on which memvos turned flush-to-zero on (their OpenMP teams included).
_turned_on: set[int] = set()
#: Bytes for a C ``fenv_t`` (32 on x86-64 glibc: the x87 environment and MXCSR).
_FENV_BYTES = 64
_team_call = None
_checked = False


def _openmp_team_call():
    """(GOMP_parallel, fegetenv, fesetenv) from torch's libgomp and libm, or None (another OpenMP runtime,
    or not glibc)."""
    global _team_call, _checked
    if not _checked:
        _checked = True
        try:
            gomp = ctypes.CDLL("libgomp.so.1", mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
            libm = ctypes.CDLL("libm.so.6")
            parallel = gomp.GOMP_parallel
            parallel.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
            parallel.restype = None
            _team_call = (parallel, libm.fegetenv, libm.fesetenv)
        except (OSError, AttributeError):  # not loaded (macOS, Windows, LLVM/Intel OpenMP builds)
            _team_call = None
    return _team_call


def set_flush_denormals(on: bool) -> int:
    """Set (or clear) flush-to-zero on this thread and on every thread of its OpenMP team.

    The team's threads get this thread's C float environment (``fesetenv`` run on each by ``GOMP_parallel``,
    in C: no Python, no GIL, so a busy Python thread cannot delay it). Returns the number of threads set:
    torch's thread count where torch runs on GNU OpenMP, 1 where only the calling thread could be reached,
    0 where the CPU has no such mode.
    """
    if not torch.set_flush_denormal(on):
        return 0
    team = _openmp_team_call()
    if team is None:
        return 1
    parallel, fegetenv, fesetenv = team
    env = ctypes.create_string_buffer(_FENV_BYTES)
    if fegetenv(env) != 0:
        return 1
    threads = torch.get_num_threads()
    parallel(ctypes.cast(fesetenv, ctypes.c_void_p), ctypes.cast(env, ctypes.c_void_p), threads, 0)
    return threads


def ensure_flush_denormals(on: bool) -> None:
    """:func:`set_flush_denormals` for the calling thread's team, where ``on``; where not, undo only what
    memvos did (a thread memvos never touched is left as it is)."""
    thread = threading.get_native_id()
    if on:
        reached = set_flush_denormals(True)
        if thread not in _turned_on:
            _turned_on.add(thread)
            logger.debug("flush-to-zero on for %d thread(s)", reached)
    elif thread in _turned_on:
        _turned_on.discard(thread)
        set_flush_denormals(False)
