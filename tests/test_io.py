"""Tests for memvos.io: frame sources, mask reading, palette PNG writing, overlays."""

from __future__ import annotations

import logging
import threading
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from memvos.errors import InputError
from memvos.io import (
    DAVIS_PALETTE,
    FrameSource,
    MaskWriter,
    OverlayWriter,
    natural_key,
    open_frames,
    open_masks,
    overlay,
    read_mask,
    write_palette_png,
)
from memvos.io.palette import color_map

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _need_data(*parts: str) -> Path:
    path = DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real DAVIS data not available ({path} is absent)")
    return path


def _write_video(path: Path, frames: list[np.ndarray], fps: int = 25) -> None:
    """Encode (H, W, 3) uint8 frames with H.264 (even sizes)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"crf": "10", "preset": "ultrafast"})
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for i, f in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(f, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def _gray_ramp_frames(n: int, h: int = 48, w: int = 64) -> list[np.ndarray]:
    """Frames whose brightness encodes their index (order check survives compression)."""
    return [np.full((h, w, 3), 20 + 20 * i, np.uint8) for i in range(n)]


def _save_palette(path: Path, labels: np.ndarray) -> None:
    im = Image.fromarray(labels.astype(np.uint8))
    im.putpalette(DAVIS_PALETTE.tobytes())
    im.save(path)


# --------------------------------------------------------------------------- sorting and palette


def test_natural_key_orders_digit_runs_by_value() -> None:
    names = ["frame10", "frame2", "frame1", "Frame3", "frame02b", "a"]
    assert sorted(names, key=natural_key) == ["a", "frame1", "frame2", "frame02b", "Frame3", "frame10"]
    assert sorted(["00010", "00009", "00100"], key=natural_key) == ["00009", "00010", "00100"]


def test_davis_palette_entries() -> None:
    assert DAVIS_PALETTE.shape == (256, 3) and DAVIS_PALETTE.dtype == np.uint8
    assert DAVIS_PALETTE[1].tolist() == [128, 0, 0]
    assert DAVIS_PALETTE[2].tolist() == [0, 128, 0]
    assert DAVIS_PALETTE[3].tolist() == [128, 128, 0]
    assert DAVIS_PALETTE[4].tolist() == [0, 0, 128]
    # differs from the evaluation colour map in 240 entries, as documented
    assert int((DAVIS_PALETTE != color_map(256)).any(axis=1).sum()) == 240


def test_davis_palette_matches_real_annotation() -> None:
    path = _need_data("davis17-schoolgirls-240p", "Annotations", "schoolgirls", "00000.png")
    with Image.open(path) as im:
        pal = np.array(im.getpalette(), np.uint8).reshape(-1, 3)
    np.testing.assert_array_equal(pal[:256], DAVIS_PALETTE)


# --------------------------------------------------------------------------- frame sources


def test_folder_source_png_exact(tiny_clip) -> None:
    src = open_frames(tiny_clip.png_frames_dir)
    assert isinstance(src, FrameSource)
    assert len(src) == len(tiny_clip.names) and src.names == tiny_clip.names
    assert (src.height, src.width) == (64, 96) and src.fps == 24.0
    got = list(src)
    assert [s for s, _ in got] == tiny_clip.names
    for (_, frame), ref in zip(got, tiny_clip.frames, strict=True):
        assert frame.shape == (64, 96, 3) and frame.dtype == np.uint8
        np.testing.assert_array_equal(frame, ref)


def test_folder_source_jpeg_natural_order_and_reiterable(tmp_path: Path) -> None:
    for i in (0, 1, 2, 10, 11):  # natural order: 2 before 10
        Image.fromarray(np.full((8, 12, 3), 10 * i, np.uint8)).save(tmp_path / f"f{i}.jpg", quality=95)
    Image.fromarray(np.zeros((8, 12), np.uint8)).save(tmp_path / "f3.png")  # grayscale frame -> RGB
    (tmp_path / "notes.txt").write_text("not a frame")
    src = open_frames(tmp_path, prefetch=2)
    assert src.names == ["f0", "f1", "f2", "f3", "f10", "f11"]
    for _ in range(2):  # each iteration decodes from the start
        frames = list(src)
        assert [s for s, _ in frames] == src.names
        assert all(f.shape == (8, 12, 3) for _, f in frames)
        assert abs(int(frames[4][1].mean()) - 100) <= 2


def test_synchronous_decoding(tiny_clip) -> None:
    src = open_frames(tiny_clip.png_frames_dir, prefetch=0)
    assert [s for s, _ in src] == tiny_clip.names


def test_early_break_stops_decoder_thread(tiny_clip) -> None:
    before = threading.active_count()
    src = open_frames(tiny_clip.frames_dir, prefetch=1)
    it = iter(src)
    next(it)
    it.close()  # what a `break` out of a for loop does
    assert threading.active_count() == before


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_video_source(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"clip{suffix}"
    _write_video(path, _gray_ramp_frames(12), fps=25)
    src = open_frames(path)
    assert len(src) == 12
    assert src.names[:3] == ["00000", "00001", "00002"] and src.names[-1] == "00011"
    assert (src.height, src.width) == (48, 64)
    assert src.fps == pytest.approx(25.0)
    got = list(src)
    assert [s for s, _ in got] == src.names
    means = [float(f.mean()) for _, f in got]
    assert all(f.shape == (48, 64, 3) and f.dtype == np.uint8 for _, f in got)
    np.testing.assert_allclose(means, [20 + 20 * i for i in range(12)], atol=3)


def test_missing_path_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        open_frames(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(InputError, match="no frames"):
        open_frames(tmp_path / "empty")


def test_unreadable_video(tmp_path: Path) -> None:
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"this is not a video" * 100)
    with pytest.raises(InputError, match="broken.mp4"):
        open_frames(bad)


def test_frames_of_different_sizes(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((8, 12, 3), np.uint8)).save(tmp_path / "00000.png")
    Image.fromarray(np.zeros((8, 14, 3), np.uint8)).save(tmp_path / "00001.png")
    with pytest.raises(InputError, match="same size"):
        open_frames(tmp_path)


def test_corrupt_frame_raises_during_iteration(tiny_clip) -> None:
    bad = tiny_clip.frames_dir / "00003.jpg"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 3])  # header intact, data truncated
    src = open_frames(tiny_clip.frames_dir)  # headers are fine: opening succeeds
    seen = []
    with pytest.raises(InputError, match="00003.jpg"):
        for stem, _ in src:
            seen.append(stem)
    assert seen == ["00000", "00001", "00002"]


# --------------------------------------------------------------------------- masks


def test_palette_mask(tiny_clip) -> None:
    ids = read_mask(tiny_clip.mask_path)
    assert ids.dtype == np.int32
    np.testing.assert_array_equal(ids, tiny_clip.labels[0])


def test_grayscale_masks(tmp_path: Path) -> None:
    lab = np.zeros((10, 12), np.uint8)
    lab[2:5, 3:7] = 255
    Image.fromarray(lab, "L").save(tmp_path / "g.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "g.png"), (lab == 255).astype(np.int32))
    ids = np.zeros((10, 12), np.uint8)
    ids[1:3, 1:3], ids[5:8, 5:8], ids[8:, :2] = 1, 2, 3
    Image.fromarray(ids, "L").save(tmp_path / "ids.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "ids.png"), ids)


def test_la_mask_drops_alpha(tmp_path: Path) -> None:
    lab = np.zeros((10, 12), np.uint8)
    lab[4:, 6:] = 255
    alpha = np.full((10, 12), 255, np.uint8)
    alpha[0, 0] = 0
    Image.fromarray(np.stack([lab, alpha], -1), "LA").save(tmp_path / "la.png")
    with Image.open(tmp_path / "la.png") as im:
        assert im.mode == "LA"
    np.testing.assert_array_equal(read_mask(tmp_path / "la.png"), (lab > 0).astype(np.int32))


def test_antialiased_grayscale_is_refused(tmp_path: Path) -> None:
    yy, xx = np.mgrid[0:40, 0:40]
    soft = np.clip((12 - np.hypot(yy - 20, xx - 20)) * 40 + 128, 0, 255).astype(np.uint8)
    Image.fromarray(soft, "L").save(tmp_path / "soft.png")
    with pytest.raises(InputError, match="soft.png.*anti-aliased"):
        read_mask(tmp_path / "soft.png")
    few = np.zeros((10, 10), np.uint8)  # 0/255 with a few blended edge values
    few[3:7, 3:7], few[3, 3:7] = 255, 128
    Image.fromarray(few, "L").save(tmp_path / "edge.png")
    with pytest.raises(InputError, match="anti-aliased"):
        read_mask(tmp_path / "edge.png")


def test_rgb_masks_map_to_palette_ids(tmp_path: Path) -> None:
    ids = np.zeros((10, 12), np.int32)
    ids[1:4, 1:4], ids[5:9, 6:11], ids[0, 11] = 1, 2, 9
    rgb = DAVIS_PALETTE[ids]
    Image.fromarray(rgb, "RGB").save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "rgb.png"), ids)
    rgba = np.concatenate([rgb, np.full((10, 12, 1), 255, np.uint8)], -1)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "rgba.png"), ids)
    bw = np.repeat(((ids == 1) * 255).astype(np.uint8)[..., None], 3, -1)  # black/white saved as RGB
    Image.fromarray(bw, "RGB").save(tmp_path / "bw.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "bw.png"), (ids == 1).astype(np.int32))


def test_antialiased_rgb_is_refused(tmp_path: Path) -> None:
    ids = np.zeros((32, 32), np.uint8)
    ids[8:24, 8:24] = 1
    im = Image.fromarray(DAVIS_PALETTE[ids], "RGB").resize((45, 45), Image.Resampling.BILINEAR)
    im.save(tmp_path / "aa.png")
    with pytest.raises(
        InputError, match=r"aa\.png is an RGB image with \d+ colours not in the DAVIS palette"
    ):
        read_mask(tmp_path / "aa.png")


def test_size_fixup_within_two_pixels(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ids = np.zeros((20, 29), np.int32)
    ids[5:10, 20:29] = 2
    _save_palette(tmp_path / "narrow.png", ids)
    with caplog.at_level(logging.WARNING, logger="memvos.io.masks"):
        out = read_mask(tmp_path / "narrow.png", size=(20, 30))
    assert out.shape == (20, 30)
    np.testing.assert_array_equal(out[:, :29], ids)
    assert (out[:, 29] == 0).all()
    assert any("narrow.png" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="memvos.io.masks"):
        out = read_mask(tmp_path / "narrow.png", size=(18, 28))  # crop 2 rows, 1 column
    np.testing.assert_array_equal(out, ids[:18, :28])
    assert caplog.records
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="memvos.io.masks"):
        read_mask(tmp_path / "narrow.png", size=(20, 29))
    assert not caplog.records  # exact size: no warning


def test_size_mismatch_beyond_tolerance(tmp_path: Path) -> None:
    _save_palette(tmp_path / "small.png", np.zeros((20, 26), np.int32))
    with pytest.raises(InputError, match=r"small\.png is 26x20 pixels but the frames are 30x20"):
        read_mask(tmp_path / "small.png", size=(20, 30))
    with pytest.raises(InputError, match="26x20"):
        open_masks(tmp_path / "small.png", ["00000"], (20, 30))


def test_corrupt_and_missing_mask(tmp_path: Path) -> None:
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(InputError, match="bad.png"):
        read_mask(tmp_path / "bad.png")
    with pytest.raises(InputError, match="bad.png"):
        open_masks(tmp_path / "bad.png", ["00000"], None)
    with pytest.raises(InputError, match="not found"):
        read_mask(tmp_path / "missing.png")
    with pytest.raises(InputError, match="not found"):
        open_masks(tmp_path / "missing", ["00000"], None)


def test_open_masks_single_file_and_sparse_folder(tiny_clip, tmp_path: Path) -> None:
    found = open_masks(tiny_clip.mask_path, tiny_clip.names, (64, 96))
    assert found == {"00000": tiny_clip.mask_path}
    sparse = tmp_path / "sparse"
    sparse.mkdir()
    for stem in ("00005", "00000", "3"):  # "3" matches frame 00003 by number
        _save_palette(sparse / f"{stem}.png", tiny_clip.labels[int(stem)])
    found = open_masks(sparse, tiny_clip.names, (64, 96))
    assert list(found) == ["00000", "00003", "00005"]
    assert found["00003"] == sparse / "3.png"
    _save_palette(sparse / "00042.png", tiny_clip.labels[0])
    with pytest.raises(InputError, match="00042.png matches no frame"):
        open_masks(sparse, tiny_clip.names, (64, 96))


# --------------------------------------------------------------------------- writing


def test_write_palette_png_roundtrip_and_atomic_replace(tmp_path: Path) -> None:
    ids = np.zeros((10, 12), np.int64)
    ids[2:5, 2:5], ids[6:, 6:] = 3, 254
    out = tmp_path / "m.png"
    out.write_bytes(b"old content")
    write_palette_png(out, ids)
    with Image.open(out) as im:
        assert im.mode == "P"
        np.testing.assert_array_equal(np.array(im.getpalette(), np.uint8).reshape(-1, 3)[:256], DAVIS_PALETTE)
    np.testing.assert_array_equal(read_mask(out), ids)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.png"]  # no temporary files left


def test_write_palette_png_rejects_ids_over_255(tmp_path: Path) -> None:
    ids = np.zeros((4, 4), np.int32)
    ids[0, 0] = 300
    with pytest.raises(InputError, match=r"object id 300 does not fit in a palette PNG \(ids 0-254"):
        write_palette_png(tmp_path / "x.png", ids)
    assert list(tmp_path.iterdir()) == []


def test_mask_writer_writes_all(tiny_clip, tmp_path: Path) -> None:
    with MaskWriter(tmp_path / "out", queue_size=2) as writer:
        for name, lab in zip(tiny_clip.names, tiny_clip.labels, strict=True):
            writer.submit(name, lab)
    assert writer.written == len(tiny_clip.names)
    for name, lab in zip(tiny_clip.names, tiny_clip.labels, strict=True):
        np.testing.assert_array_equal(read_mask(tmp_path / "out" / f"{name}.png"), lab)


def test_mask_writer_propagates_errors(tmp_path: Path) -> None:
    bad = np.zeros((4, 4), np.int32)
    bad[1, 1] = 300
    writer = MaskWriter(tmp_path / "out")
    writer.submit("00000", np.zeros((4, 4), np.int32))
    writer.submit("00001", bad)
    with pytest.raises(InputError, match="object id 300"):
        writer.close()
    with pytest.raises(InputError, match="object id 300"):  # also from the context manager
        with MaskWriter(tmp_path / "out2") as w2:
            w2.submit("00000", bad)


# --------------------------------------------------------------------------- overlays


def test_overlay_blends_and_outlines() -> None:
    frame = np.full((30, 40, 3), 100, np.uint8)
    labels = np.zeros((30, 40), np.int32)
    labels[5:25, 5:25] = 1
    out = overlay(frame, labels, alpha=0.5)
    assert out.shape == frame.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out[labels == 0], frame[labels == 0])
    np.testing.assert_allclose(out[15, 15], [114, 50, 50], atol=1)  # 0.5*100 + 0.5*(128, 0, 0)
    np.testing.assert_array_equal(out[5, 15], [128, 0, 0])  # contour in the object's colour
    assert (frame == 100).all()  # input untouched


def test_overlay_writer_produces_readable_mp4(tiny_clip, tmp_path: Path) -> None:
    path = tmp_path / "ov.mp4"
    with OverlayWriter(path, fps=10) as writer:
        for frame, lab in zip(tiny_clip.frames, tiny_clip.labels, strict=True):
            writer.write(frame[:63, :95], lab[:63, :95])  # odd size: padded to even
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip", "ov.mp4"]
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.codec_context.pix_fmt == "yuv420p"
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    assert len(decoded) == len(tiny_clip.names)
    assert decoded[0].shape == (64, 96, 3)
    src = open_frames(path)
    assert len(src) == len(tiny_clip.names) and src.fps == pytest.approx(10.0)


def test_overlay_writer_discards_on_error(tiny_clip, tmp_path: Path) -> None:
    path = tmp_path / "ov.mp4"
    with pytest.raises(RuntimeError, match="boom"):
        with OverlayWriter(path) as writer:
            writer.write(tiny_clip.frames[0], tiny_clip.labels[0])
            raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip"]


# --------------------------------------------------------------------------- real data


def test_real_judo_mask_one_pixel_narrower(caplog: pytest.LogCaptureFixture) -> None:
    path = _need_data("sparse-judo-bike", "Annotations", "judo", "00005.png")
    frames = open_frames(path.parents[2] / "JPEGImages" / "judo")
    size = (frames.height, frames.width)
    assert size == (480, 854)
    with caplog.at_level(logging.WARNING, logger="memvos.io.masks"):
        ids = read_mask(path, size=size)
    assert ids.shape == size
    assert any("00005.png" in r.getMessage() for r in caplog.records)
    assert set(np.unique(ids).tolist()) <= {0, 1, 2, 3, 4} and ids.max() > 0
    found = open_masks(path.parent, frames.names, size)
    assert list(found) == ["00000", "00005", "00008", "00013"]


@pytest.mark.parametrize("dataset", ["davis16-train", "davis16-train-480p"])
def test_real_la_mask(dataset: str) -> None:
    from memvos.io.layout import resolve_dir

    path = resolve_dir(_need_data(dataset, "Annotations", "bear")) / "00077.png"  # bear may be a link file
    with Image.open(path) as im:
        assert im.mode == "LA"
    ids = read_mask(path)
    assert set(np.unique(ids).tolist()) == {0, 1}
    # same object region as the neighbouring plain grayscale mask, roughly
    prev = read_mask(path.parent / "00076.png")
    inter = np.logical_and(ids, prev).sum()
    assert inter / max(1, np.logical_or(ids, prev).sum()) > 0.8


# --------------------------------------------------------------------------- shipped example clip

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "horse-and-coin"


def test_shipped_example_clip_is_consistent() -> None:
    if not EXAMPLE.exists():
        pytest.skip("examples/horse-and-coin not generated (scripts/make_example_clip.py)")
    src = open_frames(EXAMPLE / "frames")
    assert 40 <= len(src) <= 60 and (src.width, src.height) == (480, 270)
    first = read_mask(EXAMPLE / "mask.png", (src.height, src.width))
    assert set(np.unique(first).tolist()) == {0, 1, 2}
    gt = open_masks(EXAMPLE / "gt", src.names, (src.height, src.width))
    assert list(gt) == src.names
    np.testing.assert_array_equal(read_mask(gt[src.names[0]]), first)
    assert (EXAMPLE / "SOURCE.md").read_text().count("CC0") >= 3
    total = sum(p.stat().st_size for p in EXAMPLE.rglob("*") if p.is_file())
    assert total <= 3_000_000


def test_example_clip_render_is_deterministic() -> None:
    pytest.importorskip("skimage")
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "make_example_clip", Path(__file__).resolve().parents[1] / "scripts" / "make_example_clip.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    f1, l1 = module.render(num_frames=3, width=96, height=54)
    f2, l2 = module.render(num_frames=3, width=96, height=54)
    np.testing.assert_array_equal(f1, f2)
    np.testing.assert_array_equal(l1, l2)
    assert f1.shape == (3, 54, 96, 3) and set(np.unique(l1).tolist()) == {0, 1, 2}


def test_source_from_arrays(tiny_clip) -> None:
    src = FrameSource.from_arrays(tiny_clip.frames)
    assert len(src) == 8 and (src.height, src.width) == (64, 96) and src.names[1] == "00001"
    got = list(src)
    np.testing.assert_array_equal(np.stack([f for _, f in got]), tiny_clip.frames)
    with pytest.raises(ValueError):
        FrameSource.from_arrays(tiny_clip.frames[..., 0])


def test_decode_image_rgb_matches_pillow_and_ignores_orientation(tmp_path: Path) -> None:
    """The OpenCV decoder of frame folders gives Pillow's pixels: exact for PNG, within JPEG IDCT rounding
    for JPEG; grey images become RGB; EXIF orientation is ignored like the mask reader; garbage raises."""
    from memvos.io.frames import decode_image_rgb

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (30, 44, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    np.testing.assert_array_equal(decode_image_rgb(tmp_path / "a.png"), rgb)
    smooth = np.clip(np.indices((30, 44)).sum(0)[..., None] * [3, 5, 7], 0, 255).astype(np.uint8)
    Image.fromarray(smooth).save(tmp_path / "b.jpg", quality=95)
    with Image.open(tmp_path / "b.jpg") as im:
        want = np.asarray(im.convert("RGB")).astype(int)
    got = decode_image_rgb(tmp_path / "b.jpg")
    assert got.shape == (30, 44, 3) and got.dtype == np.uint8
    assert np.abs(got.astype(int) - want).max() <= 2
    Image.fromarray(smooth[..., 0]).save(tmp_path / "g.png")
    np.testing.assert_array_equal(decode_image_rgb(tmp_path / "g.png"), np.repeat(smooth[..., :1], 3, axis=2))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW" on display
    Image.fromarray(smooth).save(tmp_path / "r.jpg", quality=95, exif=exif)
    assert decode_image_rgb(tmp_path / "r.jpg").shape == (30, 44, 3)
    (tmp_path / "bad.jpg").write_bytes(b"not an image at all")
    with pytest.raises(InputError, match="bad.jpg"):
        decode_image_rgb(tmp_path / "bad.jpg")


# --------------------------------------------------------------------------- void, lossy masks, link files


def test_void_255_is_background_in_every_mask_form(tmp_path: Path) -> None:
    ids = np.zeros((8, 8), np.uint8)
    ids[1:3, 1:3], ids[4:6, 4:6], ids[0, :] = 1, 2, 255
    pal = Image.fromarray(ids, mode="P")
    pal.putpalette(DAVIS_PALETTE.flatten().tolist())
    pal.save(tmp_path / "p.png")
    Image.fromarray(ids, mode="L").save(tmp_path / "g.png")
    want = np.where(ids == 255, 0, ids)
    np.testing.assert_array_equal(read_mask(tmp_path / "p.png"), want)
    np.testing.assert_array_equal(read_mask(tmp_path / "g.png"), want)  # not refused as "anti-aliased"
    binary = np.where(ids > 0, 255, 0).astype(np.uint8)  # DAVIS 2016: 255 is the object itself
    Image.fromarray(binary, mode="L").save(tmp_path / "b.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "b.png"), (binary > 0).astype(np.int32))


def test_lossy_and_anti_aliased_masks_are_refused_with_the_reason(tmp_path: Path) -> None:
    ids = np.zeros((32, 32), np.uint8)
    ids[4:20, 4:20] = 1
    ids[10:30, 12:30] = 2
    Image.fromarray(ids * 100, mode="L").convert("RGB").save(tmp_path / "m.jpg", quality=90)
    with pytest.raises(InputError, match="is a JPEG image: lossy compression"):
        read_mask(tmp_path / "m.jpg")
    with pytest.raises(InputError, match="is a JPEG image"):
        open_masks(tmp_path / "m.jpg", ["00000"], (32, 32))
    ramp = np.tile(np.linspace(0, 255, 32).astype(np.uint8), (32, 1))
    Image.fromarray(ramp, mode="L").save(tmp_path / "aa.png")
    with pytest.raises(InputError, match="anti-aliased or lossy"):
        read_mask(tmp_path / "aa.png")


def test_written_masks_never_hold_the_void_id(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="255 is void"):
        write_palette_png(tmp_path / "v.png", np.full((4, 4), 255, np.int32))


def test_link_files_stand_for_sequence_folders(tmp_path: Path) -> None:
    from memvos.inference.dataset import list_sequences
    from memvos.io.layout import resolve_dir, sequence_dirs

    real = tmp_path / "elsewhere" / "JPEGImages" / "seqA"
    real.mkdir(parents=True)
    root = tmp_path / "ds" / "JPEGImages"
    root.mkdir(parents=True)
    (root / "seqB").mkdir()
    (root / "seqA").write_text("../../elsewhere/JPEGImages/seqA")  # a symlink checked out as text
    (root / "notes.txt").write_text("just a file")
    (root / "dangling").write_text("../nowhere")
    assert resolve_dir(root / "seqA") == real.resolve()
    assert resolve_dir(root / "notes.txt") == root / "notes.txt"
    assert set(sequence_dirs(root)) == {"seqA", "seqB"}
    assert list_sequences(tmp_path / "ds") == ["seqA", "seqB"]
