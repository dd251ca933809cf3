"""Flush-to-zero on torch's CPU threads (memvos.denormals) and the sessions that use it."""

from __future__ import annotations

import threading

import pytest
import torch

from memvos import denormals
from memvos.denormals import ensure_flush_denormals, set_flush_denormals

from .test_session import H, StubNet, W, render_tiny_clip

SMALLEST_NORMAL = torch.finfo(torch.float32).tiny  # 1.18e-38
ROWS = 256  # softmax rows: torch splits them over all its threads

pytestmark = pytest.mark.skipif(not torch.set_flush_denormal(False), reason="no FTZ/DAZ on this CPU")


def flushed(rows: int = ROWS) -> torch.Tensor:
    """(rows,) bool: True where the thread that computed that row of a peaked softmax (the memory read's
    case) flushed its subnormal results to zero."""
    x = torch.randn(rows, 4096, generator=torch.Generator().manual_seed(0)) * 40
    w = torch.softmax(x, dim=1)
    return ~((w > 0) & (w < SMALLEST_NORMAL)).any(dim=1)


@pytest.fixture(autouse=True)
def _plain_float_mode():
    set_flush_denormals(False)
    denormals._turned_on.clear()
    yield
    set_flush_denormals(False)
    denormals._turned_on.clear()


def test_set_reaches_every_thread_of_the_team_where_torch_alone_reaches_one() -> None:
    assert not flushed().any()
    if torch.get_num_threads() >= 2 and denormals._openmp_team_call() is not None:
        torch.set_flush_denormal(True)  # the calling thread only
        alone = flushed()
        assert alone.any() and not alone.all()
    reached = set_flush_denormals(True)
    assert reached >= 1
    if denormals._openmp_team_call() is not None:
        assert reached == torch.get_num_threads()
        assert flushed().all()
    set_flush_denormals(False)
    assert not flushed().any()


def test_ensure_off_leaves_a_thread_memvos_never_set_alone() -> None:
    seen: dict[str, bool] = {}

    def other_thread() -> None:
        torch.set_flush_denormal(True)  # the user's own choice on this thread
        ensure_flush_denormals(False)
        seen["user"] = bool(flushed(8).all())
        ensure_flush_denormals(True)
        ensure_flush_denormals(False)  # memvos set it here: now it undoes it
        seen["undone"] = bool(flushed(8).any())

    t = threading.Thread(target=other_thread)
    t.start()
    t.join()
    assert seen == {"user": True, "undone": False}


def test_fast_sessions_flush_and_exact_fp32_sessions_do_not() -> None:
    from memvos.inference.session import InferenceSession

    frames, labels = render_tiny_clip(num_frames=3, height=H, width=W, seed=3)

    def step(**kwargs) -> None:
        s = InferenceSession(StubNet(), **kwargs)
        for t, frame in enumerate(frames):
            s.step(frame, labels[0] if t == 0 else None)

    step(precision="bf16", flush_denormals=False)
    assert not flushed().any()
    step(precision="bf16")  # default on the fast CPU path
    assert flushed().all() if denormals._openmp_team_call() is not None else flushed(8).all()
    step(precision="fp32")  # bit-exact path: back to IEEE subnormals
    assert not flushed().any()
