"""Per-stage timing of the pipeline: :class:`StageTimer` and the stage names.

A leaf module (torch only): :class:`memvos.inference.session.InferenceSession` and
:func:`memvos.inference.video.propagate_video` accept a timer (the one clock of a run), and
:mod:`memvos.benchmark` reports it; neither imports the other for it.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch

__all__ = ["SESSION_STAGES", "STAGES", "StageTimer"]

#: Stages timed inside :class:`InferenceSession` when a timer is attached.
SESSION_STAGES = ("encode", "memory_read", "decode_head", "memorise")
#: Every stage reported by :func:`run_benchmark`, in pipeline order.
STAGES = ("decode", "decode_wait", *SESSION_STAGES, "other", "step", "write", "write_wait")


class StageTimer:
    """Accumulates time and call counts per named stage; thread-safe.

    ``cuda_sync``: synchronise CUDA before and after each stage so that asynchronous GPU work is charged to
    the stage that queued it (slows the pipeline a little; CPU timings need no sync).
    """

    def __init__(self, cuda_sync: bool = False) -> None:
        self.cuda_sync = cuda_sync
        self._lock = threading.Lock()
        self._seconds: dict[str, float] = defaultdict(float)
        self._calls: dict[str, int] = defaultdict(int)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the body as one call of stage ``name`` (wall clock)."""
        if self.cuda_sync:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.cuda_sync:
                torch.cuda.synchronize()
            self.add(name, time.perf_counter() - t0)

    def add(self, name: str, seconds: float, calls: int = 1) -> None:
        """Charge ``seconds`` (and ``calls`` calls) to stage ``name``."""
        with self._lock:
            self._seconds[name] += seconds
            self._calls[name] += calls

    def snapshot(self) -> dict[str, tuple[float, int]]:
        """{stage: (seconds, calls)} so far."""
        with self._lock:
            return {k: (self._seconds[k], self._calls[k]) for k in self._seconds}

    def since(self, earlier: Mapping[str, tuple[float, int]]) -> dict[str, tuple[float, int]]:
        """{stage: (seconds, calls)} accumulated after the ``earlier`` :meth:`snapshot`."""
        now = self.snapshot()
        return {
            k: (s - earlier.get(k, (0.0, 0))[0], c - earlier.get(k, (0.0, 0))[1]) for k, (s, c) in now.items()
        }
