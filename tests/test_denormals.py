"""Flush-to-zero on torch's CPU threads (memvos.denormals) and the sessions that use it."""

from __future__ import annotations

import pytest
import torch

from memvos import denormals
from memvos.denormals import flushed_denormals, set_flush_denormals
from memvos.precision import cpu_runs_bf16

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
    yield
    set_flush_denormals(False)


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


def test_the_scope_flushes_every_thread_and_gives_the_previous_mode_back() -> None:
    everywhere = denormals._openmp_team_call() is not None
    with flushed_denormals():
        assert flushed().all() if everywhere else flushed(8).all()
    assert not flushed().any()  # IEEE before, IEEE after
    with flushed_denormals(False):
        assert not flushed().any()  # off: nothing changed
    set_flush_denormals(True)  # the caller's own choice ...
    with flushed_denormals():
        pass
    if everywhere:
        assert flushed().all()  # ... is what it gets back


class _RecordingNet(StubNet):
    """StubNet that records, at each query encoding, whether that step ran flushed."""

    def __init__(self) -> None:
        super().__init__()
        self.flushed_in_step: list[bool] = []

    def encode_query(self, image):
        self.flushed_in_step.append(bool(flushed().all()))
        return super().encode_query(image)


def test_fast_sessions_flush_inside_their_steps_only_and_exact_fp32_sessions_never() -> None:
    from memvos.inference.session import InferenceSession

    if denormals._openmp_team_call() is None:
        pytest.skip("flush-to-zero reaches only the calling thread here")
    frames, labels = render_tiny_clip(num_frames=3, height=H, width=W, seed=3)

    def steps(**kwargs) -> list[bool]:
        s = InferenceSession(_RecordingNet(), **kwargs)
        for t, frame in enumerate(frames):
            s.step(frame, labels[0] if t == 0 else None)
            assert not flushed().any()  # restored after every step
        recorded = s.model.flushed_in_step  # the session's (possibly private) copy of the model
        assert len(recorded) == len(frames) - 1
        return recorded

    assert steps(precision="fp32-fast") == [True, True]  # default on the fast CPU paths
    assert steps(precision="fp32-fast", flush_denormals=False) == [False, False]
    if cpu_runs_bf16():
        assert steps(precision="bf16") == [True, True]
    assert steps(precision="fp32") == [False, False]  # bit-exact path: IEEE subnormals
