"""Issue 11 rules 1, 4 and 5 end to end: outputs never land on inputs (whatever the spelling), nothing is
misread in silence (JPEG masks, damaged JPEG frames, void 255), stale or mixed results are refused.

Every case checks the one-line error (exit status 2, no traceback) *and* that the user's files are intact.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from memvos.errors import InputError
from memvos.io.paths import check_outputs

from .conftest import TinyClip
from .test_run_dataset import _run, _write_sequence
from .test_run_dataset import weights as weights  # noqa: F401 - the module-scoped random-weights fixture
from .test_segment_cli import lite_args, segment
from .test_segment_cli import lite_weights as lite_weights  # noqa: F401 - fixture


def _digest(folder: Path) -> dict[str, str]:
    """Name -> SHA-256 of every file under ``folder`` (the user's data, to compare before/after)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _one_line_error(rc: int, err: str, command: str, expected: str) -> None:
    assert rc == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith(f"memvos {command}: error:")]
    assert len(errors) == 1, err
    assert expected in errors[0], errors[0]


# ------------------------------------------------------------------ rule 1: outputs never overwrite inputs
def _spellings(folder: Path) -> list[str]:
    """The same folder written five ways: plain, trailing slash, with '..', relative, through a symlink."""
    link = folder.parent / f"{folder.name}-link"
    if not link.exists():
        link.symlink_to(folder, target_is_directory=True)
    return [
        str(folder),
        str(folder) + "/",
        str(folder.parent / "x" / ".." / folder.name),
        os.path.relpath(folder),
        str(link),
    ]


@pytest.mark.parametrize("target", ["masks", "frames"])
def test_segment_out_never_lands_on_an_input_folder(
    tiny_clip: TinyClip,
    lite_weights: Path,
    tmp_path: Path,
    capsys,
    target: str,  # noqa: F811
) -> None:
    masks = tmp_path / "masks"
    masks.mkdir()
    shutil.copy(tiny_clip.mask_path, masks / f"{tiny_clip.names[0]}.png")
    png_frames = tiny_clip.png_frames_dir  # frames as PNGs: masks written there would replace them
    folder = masks if target == "masks" else png_frames
    before = {p: _digest(p) for p in (masks, png_frames)}
    for spelling in _spellings(folder):
        rc, err = segment(capsys, png_frames, "--mask", masks, "--out", spelling, *lite_args(lite_weights))
        _one_line_error(rc, err, "segment", "never writes over its inputs")
    assert {p: _digest(p) for p in (masks, png_frames)} == before


def test_segment_out_holding_the_mask_file_or_inside_a_dataset_is_refused(
    tiny_clip: TinyClip,
    lite_weights: Path,
    tmp_path: Path,
    capsys,  # noqa: F811
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    mask = out / f"{tiny_clip.names[0]}.png"  # would be overwritten by the first output mask
    shutil.copy(tiny_clip.mask_path, mask)
    rc, err = segment(capsys, tiny_clip.frames_dir, "--mask", mask, "--out", out, *lite_args(lite_weights))
    _one_line_error(rc, err, "segment", "holds the input")
    dataset = tmp_path / "ds"
    (dataset / "JPEGImages").mkdir(parents=True)
    (dataset / "Annotations").mkdir()
    rc, err = segment(
        capsys,
        tiny_clip.frames_dir,
        "--mask",
        tiny_clip.mask_path,
        "--out",
        dataset / "Annotations" / "new",
        *lite_args(lite_weights),
    )
    _one_line_error(rc, err, "segment", "inside the dataset folder")
    assert not (dataset / "Annotations" / "new").exists()


def test_overlay_never_replaces_the_input_video_and_is_checked_before_work(
    tiny_clip: TinyClip,
    lite_weights: Path,
    tmp_path: Path,
    capsys,  # noqa: F811
) -> None:
    import av

    video = tmp_path / "in.mp4"
    with av.open(str(video), "w") as c:
        s = c.add_stream("libx264", rate=10)
        s.height, s.width, s.pix_fmt = tiny_clip.height, tiny_clip.width, "yuv420p"
        for f in tiny_clip.frames:
            for pkt in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    before = video.read_bytes()
    base = [video, "--mask", tiny_clip.mask_path, "--out", tmp_path / "o", *lite_args(lite_weights)]
    rc, err = segment(capsys, *base, "--overlay", tmp_path / "." / "in.mp4")
    _one_line_error(rc, err, "segment", "never writes over its inputs")
    rc, err = segment(capsys, *base, "--overlay", tmp_path)
    _one_line_error(rc, err, "segment", "is a folder")
    rc, err = segment(capsys, *base, "--overlay", tmp_path / "ov.gif")
    _one_line_error(rc, err, "segment", "unknown video type")
    assert video.read_bytes() == before
    assert not (tmp_path / "o").exists()  # refused before any work
    rc, err = segment(capsys, *base, "--overlay", tmp_path / "new" / "dir" / "ov.mp4")
    assert rc == 0, err  # a missing folder of the overlay is created up front
    assert (tmp_path / "new" / "dir" / "ov.mp4").is_file()


def test_run_dataset_out_inside_the_dataset_is_refused_and_gt_is_intact(
    tmp_path: Path,
    weights: Path,
    capsys,  # noqa: F811
) -> None:
    root = tmp_path / "davis"
    _write_sequence(root, "seq", seed=0, annotations=None)
    before = _digest(root)
    for out in (root / "Annotations", root / "Annotations" / ".." / "Annotations/", root / "preds"):
        capsys.readouterr()
        rc = _run(root, out, weights)
        _one_line_error(rc, capsys.readouterr().err, "run-dataset", "inside the input folder")
    assert _digest(root) == before


def test_check_outputs_allows_files_beside_loose_inputs_only(tmp_path: Path) -> None:
    results, gt = tmp_path / "results", tmp_path / "gt"
    results.mkdir()
    gt.mkdir()
    check_outputs(reads=[gt], out_files=[results / "global.csv"], loose_reads=[results])
    with pytest.raises(InputError, match="inside the input folder"):
        check_outputs(reads=[gt], out_files=[gt / "global.csv"], loose_reads=[results])
    (results / "a.png").write_bytes(b"x")
    with pytest.raises(InputError, match="is the input"):
        check_outputs(reads=[gt], out_files=[results / "a.png"], loose_reads=[results])
    with pytest.raises(InputError, match="is the input"):
        check_outputs(reads=[gt], out_dirs=[results], loose_reads=[results])
    check_outputs(reads=[gt], out_dirs=[tmp_path / "elsewhere"])  # unrelated folders are fine


# ------------------------------------------------------------------ rule 4: nothing misread in silence
def test_jpeg_mask_and_damaged_jpeg_frame_are_refused(
    tiny_clip: TinyClip,
    lite_weights: Path,
    tmp_path: Path,
    capsys,  # noqa: F811
) -> None:
    pytest.importorskip("simplejpeg")
    jpeg_mask = tmp_path / "mask.jpg"
    Image.fromarray((tiny_clip.labels[0] * 100).astype(np.uint8)).save(jpeg_mask, quality=90)
    rc, err = segment(
        capsys, tiny_clip.frames_dir, "--mask", jpeg_mask, "--out", tmp_path / "a", *lite_args(lite_weights)
    )
    _one_line_error(rc, err, "segment", "lossy compression")
    bad = tiny_clip.frames_dir / f"{tiny_clip.names[4]}.jpg"
    data = bytearray(bad.read_bytes())  # complete file (EOI kept), entropy-coded data damaged
    for i in range(len(data) // 2, len(data) // 2 + 64):
        data[i] ^= 0x5A
    bad.write_bytes(bytes(data))
    rc, err = segment(
        capsys,
        tiny_clip.frames_dir,
        "--mask",
        tiny_clip.mask_path,
        "--out",
        tmp_path / "b",
        *lite_args(lite_weights),
    )
    _one_line_error(rc, err, "segment", f"{tiny_clip.names[4]}.jpg is a damaged JPEG")


def test_void_255_in_the_given_mask_is_never_tracked(
    tiny_clip: TinyClip,
    lite_weights: Path,
    tmp_path: Path,
    capsys,  # noqa: F811
) -> None:
    labels = tiny_clip.labels[0].astype(np.uint8)
    labels[:4, :] = 255  # a void band, as DAVIS annotations have around objects
    mask = tmp_path / "void.png"
    im = Image.fromarray(labels, mode="P")
    im.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (256 * 3 - 9))
    im.save(mask)
    out = tmp_path / "out"
    rc, err = segment(capsys, tiny_clip.frames_dir, "--mask", mask, "--out", out, *lite_args(lite_weights))
    assert rc == 0, err
    for p in out.glob("*.png"):
        with Image.open(p) as m:
            assert 255 not in np.unique(np.asarray(m))


# ------------------------------------------------------------------ rule 5: stale or mixed results
def test_foreign_or_stale_masks_in_out_are_refused_unless_overwrite(
    tiny_clip: TinyClip,
    lite_weights: Path,
    tmp_path: Path,
    capsys,  # noqa: F811
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    foreign = out / "zz_old.png"
    shutil.copy(tiny_clip.mask_path, foreign)
    args = [tiny_clip.frames_dir, "--mask", tiny_clip.mask_path, "--out", out, *lite_args(lite_weights)]
    rc, err = segment(capsys, *args)
    _one_line_error(rc, err, "segment", "no memvos run record speaks for")
    assert foreign.is_file()
    rc, err = segment(capsys, *args, "--overwrite")
    assert rc == 0, err
    assert not foreign.exists() and len(list(out.glob("*.png"))) == len(tiny_clip.names)
    rc, err = segment(capsys, *args)  # the same run again: fine
    assert rc == 0, err
    rc, err = segment(capsys, *args, "--mem-every", "2")  # other settings: refused, masks kept
    _one_line_error(rc, err, "segment", "other settings (mem_every)")
    assert len(list(out.glob("*.png"))) == len(tiny_clip.names)


def test_run_dataset_resume_with_other_settings_is_refused(
    tmp_path: Path,
    weights: Path,
    capsys,  # noqa: F811
) -> None:
    root = tmp_path / "davis"
    _write_sequence(root, "seq", seed=0, annotations=None)
    out = tmp_path / "preds"
    assert _run(root, out, weights, "--no-eval") == 0
    capsys.readouterr()
    rc = _run(root, out, weights, "--no-eval", "--top-k", "5")
    _one_line_error(rc, capsys.readouterr().err, "run-dataset", "other settings (top_k)")
    assert _run(root, out, weights, "--no-eval", "--top-k", "5", "--overwrite") == 0
    assert _run(root, out, weights, "--no-eval", "--top-k", "5") == 0  # resuming the same run is fine


def test_eval_and_train_never_write_into_their_inputs(tmp_path: Path, capsys) -> None:
    from memvos.cli import main

    gt = tmp_path / "gt" / "seq"
    gt.mkdir(parents=True)
    preds = tmp_path / "preds" / "seq"
    preds.mkdir(parents=True)
    before = _digest(tmp_path / "gt")
    for extra in (["--out", str(tmp_path / "gt")], ["--json", str(gt / "r.json")]):
        capsys.readouterr()
        rc = main(["eval", str(tmp_path / "preds"), "--gt", str(tmp_path / "gt"), *extra])
        _one_line_error(rc, capsys.readouterr().err, "eval", "inside the input folder")
    assert _digest(tmp_path / "gt") == before
    init = tmp_path / "init.pth"
    init.write_bytes(b"weights")
    capsys.readouterr()
    rc = main(
        ["train", "--out", str(tmp_path / "run"), "--set", f"init_weights={init}", "--export", str(init)]
    )
    _one_line_error(rc, capsys.readouterr().err, "train", "never writes over its inputs")
    assert init.read_bytes() == b"weights"
