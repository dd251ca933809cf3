"""Precision rules per CPU capability (probe mocked), the fp32-fast path against the exact one, refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from memvos import precision as prec
from memvos.errors import InputError
from memvos.inference.session import InferenceSession
from memvos.models.lite import LiteMemoryNetwork

CPU = torch.device("cpu")


@pytest.fixture
def capability(monkeypatch):
    """Pretend to run on a CPU of the given capability, with or without oneDNN bf16/fp16 kernels."""

    def set_cpu(cap: str, mkldnn_bf16: bool = True, fp16: bool = False) -> None:
        monkeypatch.setattr(prec, "cpu_capability", lambda: cap)
        monkeypatch.setattr(prec, "_mkldnn_bf16", lambda: mkldnn_bf16)
        if not fp16:
            monkeypatch.setattr(prec, "cpu_runs_fp16", lambda: False)

    return set_cpu


@pytest.mark.parametrize(
    ("cap", "expected"),
    [
        ("DEFAULT", "fp32-fast"),
        ("AVX2", "fp32-fast"),
        ("AVX512", "fp32-fast"),
        ("AVX512-BF16", "bf16"),
        ("AMX", "bf16"),
    ],
)
def test_auto_precision_per_cpu_capability(capability, cap: str, expected: str) -> None:
    capability(cap)
    assert prec.resolve_precision("auto", CPU) == expected
    assert prec.resolve_precision("fp32", CPU) == "fp32"  # the exact path is always there
    assert prec.resolve_precision("fp32-fast", CPU) == "fp32-fast"
    assert prec.training_precision("auto", CPU) == ("bf16" if expected == "bf16" else "fp32")


def test_bf16_and_fp16_on_a_cpu_without_their_kernels_are_one_line_refusals(capability) -> None:
    capability("AVX2", mkldnn_bf16=False)
    with pytest.raises(
        InputError, match="bf16 needs a CPU with bf16 kernels.*AVX2.*use --precision auto"
    ) as e:
        prec.resolve_precision("bf16", CPU)
    assert "\n" not in str(e.value)
    with pytest.raises(InputError, match="fp16 on the CPU needs AVX512-FP16") as e:
        prec.resolve_precision("fp16", CPU)
    assert "\n" not in str(e.value)
    with pytest.raises(InputError, match="bf16 needs"):
        InferenceSession(LiteMemoryNetwork(pretrained_backbone=False), precision="bf16")


def test_emulated_bf16_on_avx512_runs_with_a_warning(capability, caplog) -> None:
    capability("AVX512")
    with caplog.at_level("WARNING"):
        assert prec.resolve_precision("bf16", CPU) == "bf16"
    assert "no native bf16" in caplog.text


def test_isa_caps_from_the_environment_lower_the_capability(monkeypatch) -> None:
    prec.cpu_capability.cache_clear()
    monkeypatch.setattr(
        prec,
        "_cpu_flags",
        lambda: {
            "avx2",
            "avx512f",
            "avx512bw",
            "avx512vl",
            "avx512dq",
            "avx512_bf16",
            "amx_bf16",
            "amx_tile",
        },
    )
    try:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
        monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
        monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
        assert prec.cpu_capability() == "AMX"
        prec.cpu_capability.cache_clear()
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
        assert prec.cpu_capability() == "AVX2"
        prec.cpu_capability.cache_clear()
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
        monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
        assert prec.cpu_capability() == "AVX2"
        prec.cpu_capability.cache_clear()
        monkeypatch.delenv("ATEN_CPU_CAPABILITY")
        assert prec.cpu_capability() == "AVX512-BF16"
        monkeypatch.setattr(prec, "_cpu_flags", lambda: {"avx2", "fma"})
        prec.cpu_capability.cache_clear()
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
        assert prec.cpu_capability() == "AVX2"
    finally:
        prec.cpu_capability.cache_clear()


def test_unknown_precision_is_refused() -> None:
    with pytest.raises(InputError, match="unknown precision 'fp64'"):
        prec.resolve_precision("fp64", CPU)
    with pytest.raises(InputError, match="unknown training precision"):
        prec.training_precision("fp32-fast", CPU)


def _clip(t: int = 5, h: int = 64, w: int = 96) -> tuple[list[np.ndarray], np.ndarray]:
    rng = np.random.default_rng(0)
    base = (rng.random((h, w, 3)) * 255).astype(np.uint8)
    frames = [np.roll(base, 2 * i, axis=1) for i in range(t)]
    mask = np.zeros((h, w), np.int32)
    mask[16:48, 20:50] = 1
    mask[10:30, 60:90] = 2
    return frames, mask


def test_fp32_fast_is_a_fused_float32_copy_that_follows_the_exact_path() -> None:
    torch.manual_seed(0)
    lite = LiteMemoryNetwork(pretrained_backbone=False).eval()
    before = {k: v.clone() for k, v in lite.state_dict().items()}
    fast = InferenceSession(lite, precision="fp32-fast")
    exact = InferenceSession(lite, precision="fp32")
    assert fast.model is not lite and exact.model is lite
    assert all(p.dtype == torch.float32 for p in fast.model.parameters())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.model.modules())  # folded
    assert not fast.reader.exact and exact.reader.exact
    assert fast.flush_denormals and not exact.flush_denormals
    frames, mask = _clip()
    for t, frame in enumerate(frames):
        a = fast.step(frame, mask if t == 0 else None)
        b = exact.step(frame, mask if t == 0 else None)
        torch.testing.assert_close(a.probs, b.probs, atol=2e-3, rtol=0)
    after = lite.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before)  # the caller's model is untouched
