"""``memvos bench`` and :mod:`memvos.benchmark` on tiny frames with random weights (no timing asserts)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from memvos.benchmark import SyntheticVideo, blob_mask, run_benchmark
from memvos.cli import main
from memvos.errors import InputError
from memvos.inference.session import InferenceSession
from memvos.models.registry import shipped_weights_path
from memvos.timing import STAGES, StageTimer

BENCH = [
    "bench",
    "--random-weights",
    "--frames",
    "6",
    "--height",
    "64",
    "--width",
    "96",
    "--warmup",
    "2",
    "--precision",
    "fp32",
    "--device",
    "cpu",
    "--quiet",
]


@pytest.fixture(scope="module")
def lite_session() -> InferenceSession:
    from memvos.models.lite import LiteMemoryNetwork

    torch.manual_seed(0)
    return InferenceSession(LiteMemoryNetwork(pretrained_backbone=False), precision="fp32", device="cpu")


def test_cli_writes_json_with_all_stages(tmp_path: Path, capsys) -> None:
    path = tmp_path / "sub" / "bench.json"
    assert main([*BENCH, "--json", str(path), "--objects", "2"]) == 0
    report = json.loads(path.read_text())
    assert set(report["stages_ms"]) == set(STAGES)
    assert report["fps"] > 0
    assert report["frames"] == 6 and report["measured_frames"] == 4
    assert all(v >= 0 for v in report["stages_ms"].values())
    for stage in ("encode", "memory_read", "decode_head", "memorise", "step"):
        assert report["stage_calls"][stage] == 4 and report["stages_ms"][stage] > 0
    assert report["stage_calls"]["decode"] == 6 and report["stage_calls"]["write"] == 6
    s = report["settings"]
    assert (s["height"], s["width"], s["objects"], s["precision"]) == (64, 96, 2, "fp32")
    assert s["random_weights"] is True and s["model"] == "memvos-lite"
    assert report["peak_rss_mib"] > 0
    assert {"cpu", "cores", "torch", "torch_threads"} <= set(report["machine"])
    assert "RANDOM WEIGHTS" in capsys.readouterr().out


def test_source_folder_and_kept_masks(tiny_clip, tmp_path: Path) -> None:
    out = tmp_path / "masks"
    path = tmp_path / "b.json"
    args = [
        "bench",
        "--random-weights",
        "--source",
        str(tiny_clip.frames_dir),
        "--mask",
        str(tiny_clip.mask_path),
        "--frames",
        "5",
        "--warmup",
        "1",
        "--precision",
        "fp32",
        "--device",
        "cpu",
        "--quiet",
        "--out",
        str(out),
        "--json",
        str(path),
    ]
    assert main(args) == 0
    assert sorted(p.stem for p in out.glob("*.png")) == tiny_clip.names[:5]
    report = json.loads(path.read_text())
    assert report["frames"] == 5 and report["settings"]["width"] == tiny_clip.width
    # masks on frames beyond --frames are ignored; a source without --mask gets ellipses on frame 0
    assert main([*args[:4], "--mask", str(tiny_clip.gt_dir), *args[6:]]) == 0
    assert (
        main(
            [
                "bench",
                "--random-weights",
                "--source",
                str(tiny_clip.frames_dir),
                "--frames",
                "3",
                "--warmup",
                "1",
                "--objects",
                "2",
                "--precision",
                "fp32",
                "--device",
                "cpu",
                "--quiet",
                "--json",
                str(path),
            ]
        )
        == 0
    )
    assert json.loads(path.read_text())["settings"]["objects"] == 2


def test_run_benchmark_synthetic(lite_session: InferenceSession, tmp_path: Path) -> None:
    video = SyntheticVideo(48, 64, num_frames=4, objects=2, seed=1)
    first = video.first_mask()
    assert set(np.unique(first)) <= {0, 1, 2} and (first > 0).any()
    report = run_benchmark(lite_session, video, {video.names[0]: first}, warmup=1, out_dir=tmp_path)
    assert report["measured_frames"] == 3 and report["fps"] > 0
    assert len(list(tmp_path.glob("*.png"))) == 4
    assert lite_session.timer is None  # restored after the run


def test_session_timer_hooks(lite_session: InferenceSession) -> None:
    lite_session.reset()
    timer = StageTimer()
    lite_session.timer = timer
    try:
        video = SyntheticVideo(32, 48, num_frames=3, objects=1)
        for i, (_, rgb) in enumerate(video):
            lite_session.step(rgb, video.first_mask() if i == 0 else None)
    finally:
        lite_session.timer = None
    snap = timer.snapshot()
    assert {k: c for k, (_, c) in snap.items()} == {
        "encode": 2,
        "memory_read": 2,
        "decode_head": 2,
        "memorise": 2,
    }
    assert all(s > 0 for s, _ in snap.values())


def test_input_errors(capsys) -> None:
    assert main([*BENCH, "--warmup", "6"]) == 2  # warm-up must leave frames to measure
    assert "--warmup" in capsys.readouterr().err
    assert main(["bench", "--random-weights", "--weights", "x.pth", "--frames", "3"]) == 2
    assert main(["bench", "--mask", "m.png", "--random-weights"]) == 2
    with pytest.raises(InputError, match="objects"):
        blob_mask(10, 10, 0)


def test_missing_weights_suggests_random(capsys) -> None:
    shipped = shipped_weights_path("memvos-lite")
    if shipped is not None and shipped.is_file():
        pytest.skip("memvos-lite weights are shipped in this build")
    assert main(["bench", "--frames", "3", "--warmup", "1", "--quiet"]) == 2
    assert "--random-weights" in capsys.readouterr().err
