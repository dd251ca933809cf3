"""``memvos segment`` end to end: outputs, inputs of every kind, one-line errors (exit code 2) for bad input.

Models run with random weights saved to temporary files (memvos-lite: its trained weights are not needed;
stm-r50 in float32). Tests on real DAVIS clips (``../shared/data``) are marked slow and skip without the data.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from memvos.cli import main
from memvos.inference.session import InferenceSession
from memvos.io.frames import open_frames
from memvos.io.palette import DAVIS_PALETTE
from memvos.models.registry import load_model

from .conftest import SHARED, TinyClip

DATA = SHARED / "data"
MEMVOS_BIN = Path(sys.executable).parent / "memvos"


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def lite_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random memvos-lite weights (the shipped ones are still being trained)."""
    from memvos.models.lite import LiteMemoryNetwork

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "lite-random.pth"
    torch.save(LiteMemoryNetwork(pretrained_backbone=False).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def stm_weights(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Random STM-R50 weights with the DataParallel ``module.`` prefix of the released file (156 MB, deleted
    after the module's tests)."""
    from memvos.models.stm import STM

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "stm-random.pth"
    torch.save({f"module.{k}": v for k, v in STM().state_dict().items()}, path)
    yield path
    path.unlink(missing_ok=True)


def segment(capsys: pytest.CaptureFixture, *args: str | Path) -> tuple[int, str]:
    """Run ``memvos segment ARGS`` in-process; returns (exit code, stderr)."""
    capsys.readouterr()
    rc = main(["segment", *map(str, args)])
    return rc, capsys.readouterr().err


def lite_args(weights: Path) -> list[str | Path]:
    return ["--weights", weights, "--precision", "fp32", "--device", "cpu", "--quiet"]


def read_png(path: Path) -> tuple[np.ndarray, Image.Image]:
    with Image.open(path) as im:
        im.load()
        return np.asarray(im).copy(), im.copy()


def palette_png(path: Path, labels: np.ndarray) -> None:
    im = Image.fromarray(labels.astype(np.uint8), mode="P")
    im.putpalette(DAVIS_PALETTE.tobytes())
    im.save(path)


def write_mp4(path: Path, frames: np.ndarray, fps: int = 10) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"crf": "12", "preset": "ultrafast"})
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


# ---------------------------------------------------------------------------------------------- success paths
def test_segment_stm_fp32_end_to_end(tiny_clip: TinyClip, stm_weights: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    rc, err = segment(
        capsys,
        tiny_clip.frames_dir,
        "--mask",
        tiny_clip.mask_path,
        "--out",
        out,
        "--model",
        "stm-r50",
        "--weights",
        stm_weights,
        "--precision",
        "fp32",
        "--device",
        "cpu",
        "--quiet",
    )
    assert rc == 0, err
    files = sorted(out.glob("*.png"))
    assert [f.stem for f in files] == tiny_clip.names
    # the same run through the library: the CLI writes exactly the session's labels
    session = InferenceSession(load_model("stm-r50", stm_weights), precision="fp32", device="cpu")
    frames = open_frames(tiny_clip.frames_dir)
    for (stem, rgb), f in zip(frames, files, strict=True):
        labels, im = read_png(f)
        assert im.mode == "P"
        assert bytes(im.getpalette()[: 256 * 3]) == DAVIS_PALETTE.tobytes()
        result = session.step(rgb, tiny_clip.labels[0] if stem == tiny_clip.names[0] else None)
        np.testing.assert_array_equal(labels, result.labels, err_msg=stem)
    first, _ = read_png(files[0])
    np.testing.assert_array_equal(first, tiny_clip.labels[0])


def test_segment_lite_ids_preserved(tiny_clip: TinyClip, lite_weights: Path, tmp_path: Path, capsys) -> None:
    """Ids 4 and 9 (from a palette mask) come back as 4 and 9."""
    mask = np.array([0, 4, 9], np.uint8)[tiny_clip.labels[0]]
    palette_png(tmp_path / "m.png", mask)
    out = tmp_path / "out"
    rc, err = segment(
        capsys, tiny_clip.png_frames_dir, "--mask", tmp_path / "m.png", "--out", out, *lite_args(lite_weights)
    )
    assert rc == 0, err
    outputs = [read_png(out / f"{n}.png")[0] for n in tiny_clip.names]
    np.testing.assert_array_equal(outputs[0], mask)
    for labels in outputs:
        assert set(np.unique(labels).tolist()) <= {0, 4, 9}


def test_segment_video_file(tiny_clip: TinyClip, lite_weights: Path, tmp_path: Path, capsys) -> None:
    video = tmp_path / "clip.mp4"
    write_mp4(video, tiny_clip.frames)
    out = tmp_path / "out"
    rc, err = segment(capsys, video, "--mask", tiny_clip.mask_path, "--out", out, *lite_args(lite_weights))
    assert rc == 0, err
    names = sorted(p.stem for p in out.glob("*.png"))
    assert names == [f"{i:05d}" for i in range(len(tiny_clip.frames))]
    first, _ = read_png(out / "00000.png")
    np.testing.assert_array_equal(first, tiny_clip.labels[0])
    assert read_png(out / f"{names[-1]}.png")[0].shape == (tiny_clip.height, tiny_clip.width)


def test_segment_sparse_mask_folder(tiny_clip: TinyClip, lite_weights: Path, tmp_path: Path, capsys) -> None:
    """Object 1 given on frame 0, object 2 on frame 3 only: 2 appears from frame 3 on, given pixels exact."""
    masks = tmp_path / "masks"
    masks.mkdir()
    m0 = np.where(tiny_clip.labels[0] == 1, 1, 0)
    m3 = np.where(tiny_clip.labels[3] == 2, 2, 0)
    palette_png(masks / "00000.png", m0)
    palette_png(masks / "00003.png", m3)
    out = tmp_path / "out"
    rc, err = segment(capsys, tiny_clip.frames_dir, "--mask", masks, "--out", out, *lite_args(lite_weights))
    assert rc == 0, err
    outputs = [read_png(out / f"{n}.png")[0] for n in tiny_clip.names]
    assert len(outputs) == len(tiny_clip.names)
    np.testing.assert_array_equal(outputs[0], m0)
    for t in range(3):
        assert not (outputs[t] == 2).any(), f"object 2 before its first mask (frame {t})"
    assert (outputs[3][m3 == 2] == 2).all()
    assert not (outputs[3][m3 != 2] == 2).any()


def test_segment_overlay_video(tiny_clip: TinyClip, lite_weights: Path, tmp_path: Path, capsys) -> None:
    overlay = tmp_path / "overlay.mp4"
    rc, err = segment(
        capsys,
        tiny_clip.frames_dir,
        "--mask",
        tiny_clip.mask_path,
        "--out",
        tmp_path / "out",
        "--overlay",
        overlay,
        *lite_args(lite_weights),
    )
    assert rc == 0, err
    with av.open(str(overlay)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == len(tiny_clip.names)
    assert decoded[0].shape == (tiny_clip.height, tiny_clip.width, 3)
    # the overlay of frame 0 is coloured where the objects are
    diff = np.abs(decoded[0].astype(int) - tiny_clip.frames[0].astype(int)).sum(-1)
    assert diff[tiny_clip.labels[0] > 0].mean() > diff[tiny_clip.labels[0] == 0].mean() + 10


def test_segment_small_mask_size_difference_is_a_warning(
    tiny_clip: TinyClip, lite_weights: Path, tmp_path: Path, capsys, caplog
) -> None:
    mask = tiny_clip.labels[0][:, :-1]  # one pixel narrower than the frames
    palette_png(tmp_path / "m.png", mask)
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        rc, err = segment(
            capsys, tiny_clip.frames_dir, "--mask", tmp_path / "m.png", "--out", out, *lite_args(lite_weights)
        )
    assert rc == 0, err
    assert any("m.png" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    first, _ = read_png(out / "00000.png")
    np.testing.assert_array_equal(first[:, :-1], mask)
    assert (first[:, -1] == 0).all()


def test_segment_size_option_writes_full_size(
    tiny_clip: TinyClip, lite_weights: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "out"
    rc, err = segment(
        capsys,
        tiny_clip.frames_dir,
        "--mask",
        tiny_clip.mask_path,
        "--out",
        out,
        "--size",
        "32",
        *lite_args(lite_weights),
    )
    assert rc == 0, err
    for n in tiny_clip.names:
        assert read_png(out / f"{n}.png")[0].shape == (tiny_clip.height, tiny_clip.width)
    np.testing.assert_array_equal(read_png(out / "00000.png")[0], tiny_clip.labels[0])


# ---------------------------------------------------------------------------------------------- bad input
def _garbage(path: Path) -> None:
    path.write_bytes(b"\x00garbage, not an image" * 20)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def _mask_png(arr: np.ndarray, mode: str = "P") -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        path = tmp / "badmask.png"
        if mode == "P":
            palette_png(path, arr)
        else:
            Image.fromarray(arr).save(path)
        return path

    return make


def _antialiased_rgb(clip: TinyClip) -> np.ndarray:
    rgb = DAVIS_PALETTE[clip.labels[0]].astype(np.float32)
    blurred = (rgb + np.roll(rgb, 1, axis=1) + np.roll(rgb, 1, axis=0)) / 3  # soft edges, off-palette colours
    return blurred.astype(np.uint8)


BadCase = Callable[[TinyClip, Path, Path, Path], list]


def _case_missing_source(clip, tmp, lite, stm):
    return [tmp / "nope", "--mask", clip.mask_path], "not found"


def _case_empty_folder(clip, tmp, lite, stm):
    (tmp / "empty").mkdir()
    (tmp / "empty" / "notes.txt").write_text("no frames here")
    return [tmp / "empty", "--mask", clip.mask_path], "no frames"


def _case_corrupt_frame(clip, tmp, lite, stm):
    _garbage(clip.frames_dir / f"{clip.names[3]}.jpg")
    return [clip.frames_dir, "--mask", clip.mask_path], f"{clip.names[3]}.jpg"


def _case_truncated_frame(clip, tmp, lite, stm):
    _truncate(clip.frames_dir / f"{clip.names[5]}.jpg")  # header fine, data cut: fails while decoding
    return [clip.frames_dir, "--mask", clip.mask_path], f"{clip.names[5]}.jpg"


def _case_mask_size(clip, tmp, lite, stm):
    mask = _mask_png(np.pad(clip.labels[0], ((0, 3), (0, 0))))(tmp)
    return [clip.frames_dir, "--mask", mask], "badmask.png is 96x67"


def _case_rgb_antialiased(clip, tmp, lite, stm):
    mask = _mask_png(_antialiased_rgb(clip), mode="RGB")(tmp)
    return [clip.frames_dir, "--mask", mask], "not in the DAVIS palette"


def _case_empty_first_mask(clip, tmp, lite, stm):
    mask = _mask_png(np.zeros_like(clip.labels[0]))(tmp)
    return [clip.frames_dir, "--mask", mask], "empty"


def _case_id_300(clip, tmp, lite, stm):
    mask = _mask_png((clip.labels[0] * 150).astype(np.uint16), mode="I;16")(tmp)
    return [clip.frames_dir, "--mask", mask], "object id 300"


def _case_unknown_model(clip, tmp, lite, stm):
    return [clip.frames_dir, "--mask", clip.mask_path, "--model", "stm-r18"], "unknown model 'stm-r18'"


def _case_wrong_layout(clip, tmp, lite, stm):
    return [
        clip.frames_dir,
        "--mask",
        clip.mask_path,
        "--model",
        "stm-r50",
        "--weights",
        lite,
    ], "Encoder_M.conv1_m"


def _case_lite_given_stm_weights(clip, tmp, lite, stm):
    return [clip.frames_dir, "--mask", clip.mask_path, "--model", "memvos-lite", "--weights", stm], "backbone"


def _case_garbage_weights(clip, tmp, lite, stm):
    _garbage(tmp / "w.pth")
    return [clip.frames_dir, "--mask", clip.mask_path, "--weights", tmp / "w.pth"], "w.pth"


def _case_mask_name_matches_no_frame(clip, tmp, lite, stm):
    masks = tmp / "masks"
    masks.mkdir()
    shutil.copy(clip.mask_path, masks / "00000.png")
    shutil.copy(clip.mask_path, masks / "frame_b.png")
    return [clip.frames_dir, "--mask", masks], "frame_b.png matches no frame"


def _case_missing_mask(clip, tmp, lite, stm):
    return [clip.frames_dir, "--mask", tmp / "nomask.png"], "nomask.png"


def _case_cuda_without_gpu(clip, tmp, lite, stm):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    return [clip.frames_dir, "--mask", clip.mask_path, "--weights", lite, "--device", "cuda"], "cuda"


def _bad_option(option: str, value: str, expected: str) -> BadCase:
    def case(clip, tmp, lite, stm):
        return [clip.frames_dir, "--mask", clip.mask_path, option, value], expected

    case.__name__ = f"_case_option{option.replace('-', '_')}_{value.replace('-', 'minus')}"
    return case


BAD_CASES = [
    _bad_option("--size", "-1", "size must be >= 0"),
    _bad_option("--top-k", "0", "top_k must be >= 1"),
    _bad_option("--kmn-sigma", "0", "kmn sigma must be > 0"),
    _bad_option("--mem-every", "-1", "mem_every must be >= 0"),
    _bad_option("--max-memory-frames", "-1", "memory capacity must be >= 1"),
    _case_missing_source,
    _case_empty_folder,
    _case_corrupt_frame,
    _case_truncated_frame,
    _case_mask_size,
    _case_rgb_antialiased,
    _case_empty_first_mask,
    _case_id_300,
    _case_unknown_model,
    _case_wrong_layout,
    _case_lite_given_stm_weights,
    _case_garbage_weights,
    _case_mask_name_matches_no_frame,
    _case_missing_mask,
    _case_cuda_without_gpu,
]


@pytest.mark.parametrize("case", BAD_CASES, ids=[c.__name__.removeprefix("_case_") for c in BAD_CASES])
def test_bad_input_is_one_line_and_exit_2(
    case, tiny_clip: TinyClip, lite_weights: Path, stm_weights: Path, tmp_path: Path, capsys
) -> None:
    args, expected = case(tiny_clip, tmp_path, lite_weights, stm_weights)
    for option, value in (("--weights", lite_weights), ("--device", "cpu"), ("--precision", "fp32")):
        if option not in args:
            args += [option, value]
    rc, err = segment(capsys, *args, "--out", tmp_path / "out", "--quiet")
    assert rc == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("memvos segment: error:")]
    assert len(errors) == 1, err
    assert expected in errors[0], errors[0]
    # nothing else than log lines (INFO/WARNING) besides the one error line
    assert all(line.startswith(("INFO:", "WARNING:")) for line in err.splitlines() if line not in errors), err


def test_id_300_error_names_the_mask_and_writes_nothing(
    tiny_clip: TinyClip, lite_weights: Path, tmp_path: Path, capsys
) -> None:
    mask = _mask_png((tiny_clip.labels[0] * 150).astype(np.uint16), mode="I;16")(tmp_path)
    out = tmp_path / "out"
    rc, err = segment(capsys, tiny_clip.frames_dir, "--mask", mask, "--out", out, *lite_args(lite_weights))
    assert rc == 2
    assert "badmask.png" in err and "255" in err
    assert not list(out.glob("*.png"))


def test_subprocess_error_is_one_line() -> None:
    if not MEMVOS_BIN.is_file():
        pytest.skip(f"{MEMVOS_BIN} not installed")
    proc = subprocess.run(
        [
            str(MEMVOS_BIN),
            "segment",
            "/nonexistent/video.mp4",
            "--mask",
            "/nonexistent/m.png",
            "--out",
            "/tmp/x",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert lines[0].startswith("memvos segment: error:") and "/nonexistent/video.mp4" in lines[0]


def test_subprocess_success_exit_code(tiny_clip: TinyClip, lite_weights: Path, tmp_path: Path) -> None:
    if not MEMVOS_BIN.is_file():
        pytest.skip(f"{MEMVOS_BIN} not installed")
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            str(MEMVOS_BIN),
            "segment",
            str(tiny_clip.frames_dir),
            "--mask",
            str(tiny_clip.mask_path),
            "--out",
            str(out),
            *map(str, lite_args(lite_weights)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.stem for p in out.glob("*.png")) == tiny_clip.names


# ---------------------------------------------------------------------------------------------- real data
def _data(*parts: str) -> Path:
    path = DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not found: {path} (expected ../shared/data beside the checkout)")
    return path


@pytest.mark.slow
@pytest.mark.data
def test_real_schoolgirls_seven_objects(lite_weights: Path, tmp_path: Path, capsys) -> None:
    seq = _data("davis17-schoolgirls-240p")
    frames_dir = seq / "JPEGImages" / "schoolgirls"
    first_mask = seq / "Annotations" / "schoolgirls" / "00000.png"
    out = tmp_path / "out"
    rc, err = segment(capsys, frames_dir, "--mask", first_mask, "--out", out, *lite_args(lite_weights))
    assert rc == 0, err
    names = sorted(p.stem for p in frames_dir.glob("*.jpg"))
    assert sorted(p.stem for p in out.glob("*.png")) == names
    first, _ = read_png(out / f"{names[0]}.png")
    assert set(np.unique(first).tolist()) == set(range(8))
    np.testing.assert_array_equal(first, np.asarray(Image.open(first_mask)))


@pytest.mark.slow
@pytest.mark.data
def test_real_schoolgirls_stm_r50(stm_weights: Path, tmp_path: Path, capsys) -> None:
    """STM-R50 (random weights, fp32) on the first 6 frames at --size 120."""
    seq = _data("davis17-schoolgirls-240p")
    frames_dir = tmp_path / "frames"
    frames_dir.mkdir()
    for f in sorted((seq / "JPEGImages" / "schoolgirls").glob("*.jpg"))[:6]:
        shutil.copy(f, frames_dir / f.name)
    out = tmp_path / "out"
    rc, err = segment(
        capsys,
        frames_dir,
        "--mask",
        seq / "Annotations" / "schoolgirls" / "00000.png",
        "--out",
        out,
        "--model",
        "stm-r50",
        "--weights",
        stm_weights,
        "--precision",
        "fp32",
        "--device",
        "cpu",
        "--size",
        "120",
        "--quiet",
    )
    assert rc == 0, err
    assert len(list(out.glob("*.png"))) == 6
    assert set(np.unique(read_png(out / "00000.png")[0]).tolist()) == set(range(8))


@pytest.mark.slow
@pytest.mark.data
def test_real_sparse_judo(lite_weights: Path, tmp_path: Path, capsys, caplog) -> None:
    """Objects added at frames 5, 8, 13; 00005.png is one pixel narrower than the frames (a warning)."""
    seq = _data("sparse-judo-bike")
    frames_dir = seq / "JPEGImages" / "judo"
    masks = seq / "Annotations" / "judo"
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        rc, err = segment(
            capsys, frames_dir, "--mask", masks, "--out", out, "--size", "240", *lite_args(lite_weights)
        )
    assert rc == 0, err
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("00005.png" in w for w in warnings), warnings
    names = sorted(p.stem for p in frames_dir.glob("*.jpg"))
    outputs = {n: read_png(out / f"{n}.png")[0] for n in names}
    assert len(outputs) == len(names) == 16
    assert all(o.shape == (480, 854) for o in outputs.values())
    starts = {1: 0, 2: 5, 3: 8, 4: 13}
    for oid, start in starts.items():
        given = np.asarray(Image.open(masks / f"{start:05d}.png"))
        where = np.zeros((480, 854), bool)
        where[:, : given.shape[1]] = given == oid
        for t, n in enumerate(names):
            if t < start:
                assert not (outputs[n] == oid).any(), f"object {oid} on frame {t}, before its mask"
        assert (outputs[names[start]][where] == oid).all(), f"object {oid} missing on its frame {start}"


def test_every_segmenting_command_takes_the_same_session_options() -> None:
    """One home for session options: segment, run-dataset, bench and ui all get add_session_arguments."""
    import argparse

    from memvos.cli import build_parser
    from memvos.cli.segment import add_session_arguments

    probe = argparse.ArgumentParser()
    add_session_arguments(probe)
    wanted = {o for a in probe._actions for o in a.option_strings} - {"-h", "--help"}
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for command in ("segment", "run-dataset", "bench", "ui"):
        have = {o for a in sub.choices[command]._actions for o in a.option_strings}
        assert wanted <= have, (command, sorted(wanted - have))
