"""``memvos run-dataset`` on a tiny synthetic DAVIS-layout dataset, with random weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from memvos.cli import main
from memvos.inference.dataset import DONE_MARKER, Shard, first_appearance_masks
from memvos.inference.session import InferenceSession
from tests.conftest import render_tiny_clip

SEQS = ["bear", "car", "dog"]
T, H, W = 6, 48, 64


def _palette_png(path: Path, labels: np.ndarray) -> None:
    im = Image.fromarray(labels.astype(np.uint8))
    im.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (256 * 3 - 9))
    im.save(path)


def _write_sequence(root: Path, seq: str, seed: int, annotations: dict[int, list[int]] | None) -> np.ndarray:
    """Frames of a tiny two-object clip; ``annotations`` maps frame index -> ids kept (None: dense GT)."""
    frames, labels = render_tiny_clip(T, H, W, seed=seed)
    img_dir, ann_dir = root / "JPEGImages" / seq, root / "Annotations" / seq
    img_dir.mkdir(parents=True)
    ann_dir.mkdir(parents=True)
    for t in range(T):
        Image.fromarray(frames[t]).save(img_dir / f"{t:05d}.jpg", quality=95)
        if annotations is None:
            _palette_png(ann_dir / f"{t:05d}.png", labels[t])
        elif t in annotations:
            _palette_png(ann_dir / f"{t:05d}.png", np.where(np.isin(labels[t], annotations[t]), labels[t], 0))
    return labels


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from memvos.models.lite import LiteMemoryNetwork

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "lite-random.pth"
    torch.save(LiteMemoryNetwork(pretrained_backbone=False).state_dict(), path)
    return path


@pytest.fixture
def davis(tmp_path: Path) -> Path:
    """Three sequences with dense ground truth."""
    root = tmp_path / "davis"
    for i, seq in enumerate(SEQS):
        _write_sequence(root, seq, seed=i, annotations=None)
    return root


@pytest.fixture
def step_calls(monkeypatch: pytest.MonkeyPatch) -> list[list[tuple[int, np.ndarray | None]]]:
    """Spy on InferenceSession.step: one list per sequence of (frame index, given mask or None)."""
    calls: list[list[tuple[int, np.ndarray | None]]] = []
    original = InferenceSession.step

    def spy(self, image, mask=None, objects=None):
        if self.index == 0:
            calls.append([])
        calls[-1].append((self.index, None if mask is None else np.array(mask, copy=True)))
        return original(self, image, mask, objects)

    monkeypatch.setattr(InferenceSession, "step", spy)
    return calls


def _run(root: Path, out: Path, weights: Path, *extra: str) -> int:
    return main(
        [
            "run-dataset",
            str(root),
            "--out",
            str(out),
            "--weights",
            str(weights),
            "--device",
            "cpu",
            "--precision",
            "fp32",
            "--quiet",
            "--workers",
            "1",
            *extra,
        ]
    )


def _done(out: Path) -> set[str]:
    return {p.parent.name for p in out.glob(f"*/{DONE_MARKER}")}


def test_outputs_every_frame_and_evaluates(
    davis: Path, tmp_path: Path, weights: Path, step_calls, capsys
) -> None:
    out = tmp_path / "out"
    assert _run(davis, out, weights) == 0
    for seq in SEQS:
        pngs = sorted(p.name for p in (out / seq).glob("*.png"))
        assert pngs == [f"{t:05d}.png" for t in range(T)]
        with Image.open(out / seq / "00003.png") as im:
            assert im.mode == "P" and im.size == (W, H)
        assert (out / seq / DONE_MARKER).is_file()
    # dense ground truth: the model got the first frame's mask only, never a later frame's
    assert len(step_calls) == len(SEQS)
    for calls in step_calls:
        assert [i for i, _ in calls] == list(range(T))
        assert [i for i, m in calls if m is not None] == [0]
    # dense GT and one shard: the official CSVs are written and the table printed
    per_seq = (out / "per-sequence_results-val.csv").read_text()
    assert (out / "global_results-val.csv").is_file()
    for seq in SEQS:
        assert f"{seq}_1" in per_seq and f"{seq}_2" in per_seq
    assert "J&F-Mean" in capsys.readouterr().out


def test_resume_skips_finished_sequences(davis: Path, tmp_path: Path, weights: Path, step_calls) -> None:
    out = tmp_path / "out"
    assert _run(davis, out, weights, "--no-eval") == 0
    assert len(step_calls) == 3
    mtime = (out / "bear" / "00002.png").stat().st_mtime_ns
    assert not list(out.glob("*.csv"))  # --no-eval
    step_calls.clear()
    assert _run(davis, out, weights, "--no-eval") == 0
    assert step_calls == []  # everything was finished
    assert (out / "bear" / "00002.png").stat().st_mtime_ns == mtime
    (out / "car" / DONE_MARKER).unlink()  # an interrupted sequence is redone
    assert _run(davis, out, weights, "--no-eval") == 0
    assert len(step_calls) == 1 and len(step_calls[0]) == T
    step_calls.clear()
    assert _run(davis, out, weights, "--no-eval", "--no-resume") == 0
    assert len(step_calls) == 3


def test_shards_partition_the_sequences(davis: Path, tmp_path: Path, weights: Path) -> None:
    outs = [tmp_path / "s0", tmp_path / "s1"]
    for i, out in enumerate(outs):
        assert _run(davis, out, weights, "--shard", f"{i}/2") == 0
        assert not list(out.glob("*.csv"))  # one shard does not evaluate
    d0, d1 = _done(outs[0]), _done(outs[1])
    assert d0 and d1 and not d0 & d1
    assert d0 | d1 == set(SEQS)


def test_torchrun_environment_selects_shard(
    davis: Path, tmp_path: Path, weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert Shard.parse(None) == Shard(1, 2)
    out = tmp_path / "out"
    assert _run(davis, out, weights) == 0
    assert _done(out) == set(SEQS[1::2])
    assert not list(out.glob("*.csv"))


def test_sequences_option(davis: Path, tmp_path: Path, weights: Path) -> None:
    out = tmp_path / "out"
    assert _run(davis, out, weights, "--sequences", "dog", "--no-eval") == 0
    assert _done(out) == {"dog"}
    assert _run(davis, out, weights, "--sequences", "cat") == 2  # unknown sequence: one-line error


def test_sparse_annotations_give_only_first_appearance(tmp_path: Path, weights: Path, step_calls) -> None:
    root = tmp_path / "ytvos"
    # YouTube-VOS style: object 2 first annotated on frame 3; frame 5 annotates both (later GT).
    labels_a = _write_sequence(root, "a", seed=3, annotations={0: [1], 3: [1, 2], 5: [1, 2]})
    # an object that first appears on frame 2: nothing is given before it
    labels_b = _write_sequence(root, "b", seed=4, annotations={2: [2], 4: [2]})
    out = tmp_path / "out"
    assert _run(root, out, weights) == 0
    assert len(step_calls) == 2
    given_a = {i: m for i, m in step_calls[0] if m is not None}
    assert sorted(given_a) == [0, 3]
    np.testing.assert_array_equal(given_a[0], np.where(labels_a[0] == 1, 1, 0))
    np.testing.assert_array_equal(given_a[3], np.where(labels_a[3] == 2, 2, 0))  # object 1 not given again
    given_b = {i: m for i, m in step_calls[1] if m is not None}
    assert sorted(given_b) == [2]
    np.testing.assert_array_equal(given_b[2], np.where(labels_b[2] == 2, 2, 0))
    for seq in ("a", "b"):
        assert len(list((out / seq).glob("*.png"))) == T
    with Image.open(out / "b" / "00000.png") as im:  # before the first mask there is no object
        assert not np.asarray(im).any()
    assert not list(out.glob("*.csv"))  # sparse ground truth is not evaluated


def test_first_appearance_masks_never_repeat_an_object(tmp_path: Path) -> None:
    ann = tmp_path / "ann"
    ann.mkdir()
    lab = np.zeros((4, 5), np.int32)
    lab[0, 0], lab[1, 1] = 1, 2
    _palette_png(ann / "f0.png", np.where(lab == 1, 1, 0))
    _palette_png(ann / "f1.png", lab)
    _palette_png(ann / "f2.png", lab)
    masks = first_appearance_masks(ann, ["f0", "f1", "f2", "f3"], (4, 5))
    assert sorted(masks) == ["f0", "f1"]
    assert masks["f1"][0, 0] == 0 and masks["f1"][1, 1] == 2


def test_input_errors(davis: Path, tmp_path: Path, weights: Path, capsys) -> None:
    assert _run(davis, tmp_path / "o", weights, "--shard", "2/2") == 2
    assert "--shard" in capsys.readouterr().err
    assert _run(tmp_path / "missing", tmp_path / "o", weights) == 2
    (tmp_path / "noann" / "JPEGImages" / "x").mkdir(parents=True)
    assert _run(tmp_path / "noann", tmp_path / "o", weights) == 2
    assert "Annotations" in capsys.readouterr().err


def test_torchrun_local_rank_picks_its_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from memvos.cli.run_dataset import _device_for_rank

    assert _device_for_rank("auto") == "auto"  # not under torchrun
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert _device_for_rank("auto") == "cuda:1"
    assert _device_for_rank("cuda") == "cuda:1"
    assert _device_for_rank("cpu") == "cpu" and _device_for_rank("cuda:0") == "cuda:0"
