"""Backends: torch or onnxruntime on the exported graphs; ``auto`` measures once per CPU and size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from memvos.errors import InputError
from memvos.inference import backends
from memvos.models.lite import LiteMemoryNetwork

from .conftest import TinyClip
from .test_segment_cli import lite_weights as lite_weights  # noqa: F401 - module fixture
from .test_segment_cli import segment


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MEMVOS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _choose(backend: str, weights: Path, precision: str = "auto", hw=(64, 96)):
    model = LiteMemoryNetwork(pretrained_backbone=False).eval()
    return backends.choose_backend(
        backend,
        model,
        model_name="memvos-lite",
        weights=weights,
        precision=precision,
        device="cpu",
        frame_hw=hw,
        session_kwargs={},
    )


def test_bad_backend_requests_are_one_line_errors(lite_weights: Path, monkeypatch) -> None:  # noqa: F811
    with pytest.raises(InputError, match="unknown backend 'tensorrt'"):
        _choose("tensorrt", lite_weights)
    with pytest.raises(InputError, match="exact torch path"):
        _choose("onnxruntime", lite_weights, precision="fp32")
    monkeypatch.setattr(backends, "onnxruntime_available", lambda: False)
    with pytest.raises(InputError, match=r"needs onnxruntime: pip install .*memvos\[onnx\]"):
        _choose("onnxruntime", lite_weights)
    _, chosen, _ = _choose("auto", lite_weights)  # auto falls back to torch without onnxruntime
    assert chosen == "torch"


def test_auto_measures_once_per_size_and_keeps_the_faster(lite_weights: Path, monkeypatch) -> None:  # noqa: F811
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    calls: list[str] = []

    def fake_time(make_session, hw):
        session = make_session()
        calls.append(session.backend)
        return 0.01 if session.backend == "onnxruntime" else 0.02  # onnxruntime "faster"

    monkeypatch.setattr(backends, "time_step", fake_time)
    _, chosen, precision = _choose("auto", lite_weights)
    assert (chosen, precision) == ("onnxruntime", "fp32-fast") and calls == ["torch", "onnxruntime"]
    _, chosen, _ = _choose("auto", lite_weights)
    assert chosen == "onnxruntime" and len(calls) == 2  # cached: not measured again
    _choose("auto", lite_weights, hw=(96, 128))
    assert len(calls) == 4  # another input size is measured
    _, chosen, _ = _choose("auto", lite_weights, precision="fp32")
    assert chosen == "torch"  # the exact path is always torch
    for asked in ("bf16", "fp16"):  # an explicit reduced precision is never swapped for float32 graphs
        try:
            _, chosen, precision = _choose("auto", lite_weights, precision=asked)
        except InputError:
            continue  # this CPU has no kernels for it
        assert (chosen, precision) == ("torch", asked)


def test_segment_with_onnxruntime_gives_the_torch_masks(
    tiny_clip: TinyClip,
    lite_weights: Path,  # noqa: F811
    tmp_path: Path,
    capsys,
    caplog,
) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    torch.manual_seed(0)
    caplog.set_level("INFO", logger="memvos.cli.segment")
    out = {}
    for backend, precision in (("torch", "fp32"), ("onnxruntime", "fp32-fast")):
        folder = tmp_path / backend
        rc, err = segment(
            capsys,
            tiny_clip.frames_dir,
            "--mask",
            tiny_clip.mask_path,
            "--out",
            folder,
            "--weights",
            lite_weights,
            "--backend",
            backend,
            "--precision",
            precision,
            "--device",
            "cpu",
            "--quiet",
        )
        assert rc == 0, err
        assert f"({backend}, {precision}, cpu)" in caplog.text
        from PIL import Image

        out[backend] = np.stack([np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))])
    assert out["torch"].shape == out["onnxruntime"].shape
    assert (out["torch"] == out["onnxruntime"]).mean() > 0.995
