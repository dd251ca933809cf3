"""Tests of the ``memvos eval`` command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from memvos.cli import main

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "davis-metrics"


def _save_palette(label: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(label.astype(np.uint8), mode="P")
    img.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (768 - 9))
    img.save(path)


def _toy_dataset(root: Path, n_seq: int = 3, n_frames: int = 6) -> tuple[Path, Path]:
    """``root/gt`` and ``root/pred``: n_seq sequences of 24x32 frames, 2 objects, imperfect predictions."""
    rng = np.random.default_rng(1)
    for s in range(n_seq):
        for t in range(n_frames):
            gt = np.zeros((24, 32), np.uint8)
            gt[2 + t : 10 + t, 3:12] = 1
            gt[14:20, 18 + s : 28 + s] = 2
            pred = gt.copy()
            pred[rng.integers(0, 24, 5), rng.integers(0, 32, 5)] = rng.integers(0, 3, 5)
            _save_palette(gt, root / "gt" / f"seq{s}" / f"{t:05d}.png")
            _save_palette(pred, root / "pred" / f"seq{s}" / f"{t:05d}.png")
    return root / "pred", root / "gt"


@pytest.mark.skipif(not (FIXTURES / "expected.json").is_file(), reason=f"fixtures absent: {FIXTURES}")
def test_eval_matches_official_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    case = "sg_combined"
    rc = main(
        [
            "eval",
            str(FIXTURES / "cases" / case),
            "--gt",
            str(FIXTURES / "gt" / "Annotations"),
            "--out",
            str(tmp_path),
            "--json",
            str(tmp_path / "r.json"),
            "--workers",
            "1",
            "--quiet",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "J&F-Mean" in out and "schoolgirls_7" in out
    for name in ("global_results-val.csv", "per-sequence_results-val.csv"):
        assert (tmp_path / name).read_text() == (FIXTURES / "official_csv" / case / name).read_text()
    expected = json.loads((FIXTURES / "expected.json").read_text())["cases"][case]
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["global"]["J&F-Mean"] == pytest.approx(expected["global"]["all"]["J&F-Mean"], abs=1e-12)
    assert data["objects"][1]["F"] == pytest.approx(expected["objects"]["schoolgirls"]["2"]["F"], abs=1e-12)


def test_eval_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pred, gt = _toy_dataset(tmp_path)
    rc = main(["eval", str(pred), "--gt", str(gt), "--workers", "1", "--quiet", "--set", "toy"])
    assert rc == 0
    rows = (pred / "per-sequence_results-toy.csv").read_text().splitlines()  # default --out = RESULTS
    assert rows[0] == "Sequence,J-Mean,F-Mean"
    assert [r.split(",")[0] for r in rows[1:]] == ["seq0_1", "seq0_2", "seq1_1", "seq1_2", "seq2_1", "seq2_2"]
    header = (pred / "global_results-toy.csv").read_text().splitlines()[0]
    assert header == "J&F-Mean,J-Mean,J-Recall,J-Decay,F-Mean,F-Recall,F-Decay"
    capsys.readouterr()

    out_dir = tmp_path / "out16"
    rc = main(
        ["eval", str(pred), "--gt", str(gt), "--year", "2016", "--sequences", "seq2", "seq0"]
        + ["--out", str(out_dir), "--workers", "1", "--quiet", "--t-stability"]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "2016 protocol" in out and "T-Mean (approx.)" in out
    rows = (out_dir / "per-sequence_results-val.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["seq2", "seq0"]


def test_eval_workers_give_identical_results(tmp_path: Path) -> None:
    pred, gt = _toy_dataset(tmp_path)
    for workers in ("1", "2"):
        out = tmp_path / f"w{workers}"
        args = ["eval", str(pred), "--gt", str(gt), "--out", str(out), "--json", str(out / "r.json")]
        assert main(args + ["--workers", workers, "--quiet"]) == 0
    assert (tmp_path / "w1" / "r.json").read_text() == (tmp_path / "w2" / "r.json").read_text()


def test_eval_error_is_one_line_naming_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pred, gt = _toy_dataset(tmp_path, n_seq=1)
    bad = pred / "seq0" / "00003.png"
    _save_palette(np.full((24, 32), 5, np.uint8), bad)
    rc = main(["eval", str(pred), "--gt", str(gt), "--workers", "1", "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and "label 5" in err[0]
    rc = main(["eval", str(tmp_path / "nothing"), "--gt", str(gt), "--quiet"])
    assert rc == 2
    assert "nothing" in capsys.readouterr().err
