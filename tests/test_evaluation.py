"""Tests of memvos.evaluation: bit-exactness against the official DAVIS evaluator's numbers and edge cases."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from memvos.errors import InputError
from memvos.evaluation import (
    boundary_tolerance,
    db_statistics,
    decay_bin_indices,
    evaluate,
    evaluate_sequence,
    f_measure,
    jaccard,
    read_label_map,
    seg2bmap,
    temporal_stability_pair,
    write_csvs,
    write_json,
)
from memvos.evaluation.metrics import disk

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "davis-metrics"
ATOL = 1e-12
STAT_KEYS = ("J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")
GLOBAL_KEYS = ("J&F-Mean", *STAT_KEYS)


def _load_expected() -> dict | None:
    path = FIXTURES / "expected.json"
    return json.loads(path.read_text()) if path.is_file() else None


EXPECTED = _load_expected()
CASES = sorted(EXPECTED["cases"]) if EXPECTED else ["fixtures-absent"]
needs_fixtures = pytest.mark.skipif(
    EXPECTED is None, reason=f"DAVIS metric fixtures not found at {FIXTURES} (../shared beside the checkout)"
)


def _save_palette(label: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(label.astype(np.uint8), mode="P")
    img.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [0] * (768 - 12))
    img.save(path)


# --------------------------------------------------------------------------------------------------
# Reference implementation: a plain transcription of the official formulas on the full frame
# --------------------------------------------------------------------------------------------------


def _ref_seg2bmap(seg: np.ndarray) -> np.ndarray:
    seg = seg.astype(bool)
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = seg ^ e | seg ^ s | seg ^ se
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = 0
    return b


def _ref_f(pred: np.ndarray, gt: np.ndarray) -> float:
    bound_pix = math.ceil(0.008 * float(np.linalg.norm(pred.shape)))
    fb, gb = _ref_seg2bmap(pred), _ref_seg2bmap(gt)
    r = np.arange(-bound_pix, bound_pix + 1)
    k = ((r[:, None] ** 2 + r[None, :] ** 2) <= bound_pix**2).astype(np.uint8)
    fd = cv2.dilate(fb.astype(np.uint8), k)
    gd = cv2.dilate(gb.astype(np.uint8), k)
    n_fg, n_gt = int(fb.sum()), int(gb.sum())
    if n_fg == 0 and n_gt > 0:
        p, rc = 1, 0
    elif n_fg > 0 and n_gt == 0:
        p, rc = 0, 1
    elif n_fg == 0 and n_gt == 0:
        p, rc = 1, 1
    else:
        p = np.sum(fb * gd) / float(n_fg)
        rc = np.sum(gb * fd) / float(n_gt)
    return 0.0 if p + rc == 0 else 2 * p * rc / (p + rc)


def _ref_j(pred: np.ndarray, gt: np.ndarray) -> float:
    union = np.sum(pred | gt)
    return 1.0 if union == 0 else np.sum(pred & gt) / union


# --------------------------------------------------------------------------------------------------
# Per-frame metrics
# --------------------------------------------------------------------------------------------------


def test_boundary_tolerance() -> None:
    assert boundary_tolerance((480, 854)) == 8
    assert boundary_tolerance((240, 432)) == 4
    assert boundary_tolerance((180, 240)) == 3  # 2.4000000000000004 -> ceil, not round
    assert boundary_tolerance((1080, 1920)) == 18
    assert boundary_tolerance((100, 100), bound_th=5) == 5


def test_disk_matches_definition() -> None:
    k = disk(2)
    expected = np.array(
        [[0, 0, 1, 0, 0], [0, 1, 1, 1, 0], [1, 1, 1, 1, 1], [0, 1, 1, 1, 0], [0, 0, 1, 0, 0]], dtype=np.uint8
    )
    np.testing.assert_array_equal(k, expected)
    morphology = pytest.importorskip("skimage.morphology")
    for r in (1, 3, 4, 8, 18):
        np.testing.assert_array_equal(disk(r), morphology.disk(r).astype(np.uint8))


def test_seg2bmap_rules() -> None:
    seg = np.zeros((4, 5), bool)
    seg[1:3, 1:3] = True
    b = seg2bmap(seg)
    # Pixels differing from right, lower or lower-right neighbour: the square's top-left ring is shifted.
    expected = np.array(
        [
            [1, 1, 1, 0, 0],
            [1, 0, 1, 0, 0],
            [1, 1, 1, 0, 0],
            [0, 0, 0, 0, 0],
        ],
        dtype=bool,
    )
    expected[0, 0] = True  # (0,0) differs from its lower-right neighbour (1,1)
    np.testing.assert_array_equal(b, _ref_seg2bmap(seg))
    np.testing.assert_array_equal(b, expected)
    full = np.ones((3, 4), bool)
    assert not seg2bmap(full).any()  # the image border is not a boundary
    last_row = np.zeros((3, 4), bool)
    last_row[2, 1:] = True  # touches bottom and right borders
    b = seg2bmap(last_row)
    assert b[2, 0] and not b[2, 2] and not b[2, 3]  # last row: only the right neighbour counts
    assert b[1, 0:4].all()  # above the region (in the last column: differs from the lower neighbour)
    np.testing.assert_array_equal(b, _ref_seg2bmap(last_row))


def test_jaccard_and_f_hand_values() -> None:
    gt = np.zeros((20, 30), bool)
    gt[5:10, 5:15] = True  # 50 px
    pred = np.zeros_like(gt)
    pred[5:10, 10:20] = True  # 50 px, 25 overlap
    assert jaccard(pred, gt) == 25 / 75
    empty = np.zeros_like(gt)
    assert jaccard(empty, empty) == 1.0 and f_measure(empty, empty) == 1.0
    assert jaccard(empty, gt) == 0.0 and f_measure(empty, gt) == 0.0
    assert jaccard(gt, empty) == 0.0 and f_measure(gt, empty) == 0.0
    assert f_measure(gt, gt) == 1.0
    full = np.ones_like(gt)
    assert f_measure(full, full) == 1.0  # no boundary on either side
    assert f_measure(full, gt) == 0.0  # no predicted boundary but a GT boundary: P = 1, R = 0
    assert f_measure(gt, full) == 0.0  # a predicted boundary but no GT boundary: P = 0, R = 1
    # tolerance 1: the shifted square's boundaries match partially
    assert 0.0 < f_measure(pred, gt, bound_pix=1) == _ref_f_tol(pred, gt, 1) < 1.0


def _ref_f_tol(pred: np.ndarray, gt: np.ndarray, r: int) -> float:
    fb, gb = _ref_seg2bmap(pred), _ref_seg2bmap(gt)
    k = disk(r)
    p = np.sum(fb & cv2.dilate(gb.astype(np.uint8), k).astype(bool)) / float(fb.sum())
    rc = np.sum(gb & cv2.dilate(fb.astype(np.uint8), k).astype(bool)) / float(gb.sum())
    return 2 * p * rc / (p + rc)


def test_metrics_equal_full_frame_reference_on_random_masks() -> None:
    rng = np.random.default_rng(0)
    for i in range(60):
        h, w = int(rng.integers(3, 90)), int(rng.integers(3, 120))
        masks = []
        for _ in range(2):
            m = np.zeros((h, w), np.uint8)
            for _ in range(int(rng.integers(0, 4))):
                c = (int(rng.integers(-5, w + 5)), int(rng.integers(-5, h + 5)))
                cv2.circle(m, c, int(rng.integers(1, 25)), 1, -1)
            if i % 7 == 0:
                m[rng.random((h, w)) < 0.05] ^= 1  # scattered pixels, incl. on the borders
            masks.append(m.astype(bool))
        pred, gt = masks
        assert jaccard(pred, gt) == _ref_j(pred, gt)
        assert f_measure(pred, gt) == _ref_f(pred, gt)


# --------------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "ids"),
    [(28, [0, 7, 14, 20, 27]), (23, [0, 6, 11, 17, 22]), (38, [0, 9, 19, 28, 37]), (18, [0, 4, 9, 13, 17])],
)
def test_decay_indices_table(n: int, ids: list[int]) -> None:
    assert decay_bin_indices(n).tolist() == ids


def test_decay_indices_do_not_wrap() -> None:
    for n in (257, 300, 1000):
        ids = decay_bin_indices(n)
        assert ids[0] == 0 and ids[-1] == n - 1
        assert np.all(np.diff(ids) > 0)
        assert decay_bin_indices(n, official_uint8=True)[-1] == (n - 1) % 256  # the official wrap
    assert decay_bin_indices(256).tolist() == decay_bin_indices(256, official_uint8=True).tolist()
    v = np.linspace(1.0, 0.0, 300)
    _, _, decay = db_statistics(v)
    ids = [0, 75, 150, 224, 299]  # round(linspace(1, 300, 5)) - 1 = round(1, 75.75, 150.5, 225.25, 300) - 1
    assert decay_bin_indices(300).tolist() == ids
    assert decay == np.mean(v[0:76]) - np.mean(v[224:300])
    assert decay > 0.7


def test_db_statistics_hand_values() -> None:
    v = np.array([1.0, 0.5, 0.6, 0.0, 0.2])  # ids round(1, 2, 3, 4, 5) - 1 = 0..4
    mean, recall, decay = db_statistics(v)
    assert mean == pytest.approx(0.46, abs=1e-15)
    assert recall == 0.4  # strictly greater than 0.5
    assert decay == pytest.approx(np.mean([1.0, 0.5]) - np.mean([0.0, 0.2]), abs=1e-15)


# --------------------------------------------------------------------------------------------------
# The official numbers (expected.json)
# --------------------------------------------------------------------------------------------------


def _check_object(obj, exp: dict, where: str) -> None:
    assert obj.frames == exp["frames"], where
    np.testing.assert_allclose(obj.J, exp["J"], rtol=0, atol=ATOL, err_msg=f"{where} J")
    np.testing.assert_allclose(obj.F, exp["F"], rtol=0, atol=ATOL, err_msg=f"{where} F")
    stats = obj.stats()
    for key in STAT_KEYS:
        assert stats[key] == pytest.approx(exp[key], abs=ATOL, rel=0), f"{where} {key}"


def _check_globals(result, groups: dict, where: str) -> None:
    for name, exp in groups.items():
        row = result.global_row(exp["sequences"])
        assert row.num_objects == exp["num_objects"], f"{where} {name}"
        values = row.as_dict()
        for key in GLOBAL_KEYS:
            assert values[key] == pytest.approx(exp[key], abs=ATOL, rel=0), f"{where} {name} {key}"


@needs_fixtures
@pytest.mark.parametrize("case", CASES)
def test_official_numbers_2017(case: str, tmp_path: Path) -> None:
    spec = EXPECTED["cases"][case]
    result = evaluate(FIXTURES / spec["predictions"], FIXTURES / "gt" / "Annotations", year=2017)
    assert result.sequences == spec["sequences"]
    expected_names = [o["name"] for seq in spec["sequences"] for o in spec["objects"][seq].values()]
    assert [o.name for o in result.objects] == expected_names
    for obj in result.objects:
        _check_object(obj, spec["objects"][obj.sequence][str(obj.object_id)], f"{case}/{obj.name}")
    _check_globals(result, spec["global"], case)
    # CSV files in the official format
    write_csvs(result, tmp_path, "val")
    for kind in ("global", "per_sequence"):
        official = FIXTURES / spec["official_csv"][kind]
        assert (tmp_path / official.name).read_text() == official.read_text(), f"{case} {official.name}"


@needs_fixtures
@pytest.mark.parametrize("case", CASES)
def test_official_numbers_2016_merged(case: str) -> None:
    spec = EXPECTED["cases"][case]
    result = evaluate(FIXTURES / spec["predictions"], FIXTURES / "gt" / "Annotations", year=2016)
    exp_seqs = spec["davis2016"]["sequences"]
    assert [o.name for o in result.objects] == list(exp_seqs)
    for obj in result.objects:
        _check_object(obj, exp_seqs[obj.sequence], f"{case}/2016/{obj.name}")
    _check_globals(result, spec["davis2016"]["global"], f"{case}/2016")


@needs_fixtures
def test_evaluate_sequence_in_memory_matches() -> None:
    spec = EXPECTED["cases"]["blobs_holes"]
    seq = "synthetic-occlusion"
    gt_files = sorted((FIXTURES / "gt" / "Annotations" / seq).glob("*.png"))
    gt = [read_label_map(p)[0] for p in gt_files]
    pred = [read_label_map(FIXTURES / spec["predictions"] / seq / p.name)[0] for p in gt_files]
    pred[0] = pred[-1] = None  # never read
    objs = evaluate_sequence(pred, gt, sequence=seq, frame_names=[p.stem for p in gt_files])
    assert len(objs) == 2
    for obj in objs:
        _check_object(obj, spec["objects"][seq][str(obj.object_id)], obj.name)


# --------------------------------------------------------------------------------------------------
# Objects that appear mid-video, input formats, errors
# --------------------------------------------------------------------------------------------------


def _square(shape: tuple[int, int], y: int, x: int, size: int, value: int, out: np.ndarray | None = None):
    out = np.zeros(shape, np.uint8) if out is None else out
    out[y : y + size, x : x + size] = value
    return out


def _mid_video_example() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """6 frames 12x12: object 1 (4x4) everywhere, object 2 (3x3) from frame 2 on."""
    shape = (12, 12)
    gt, pred = [], []
    for t in range(6):
        g = _square(shape, 1, 1, 4, 1)
        p = g.copy()
        if t >= 2:
            _square(shape, 7, 7, 3, 2, g)
        if t == 1:
            _square(shape, 7, 7, 3, 2, p)  # before object 2 appears: not scored
        if t == 3:
            _square(shape, 7, 7, 3, 2, p)  # perfect
        if t == 4:
            _square(shape, 7, 8, 3, 2, p)  # shifted by one column: J = 6 / 12
        pred.append(p)
        gt.append(g)
    return pred, gt


def test_object_appearing_mid_video() -> None:
    pred, gt = _mid_video_example()
    objs = evaluate_sequence(pred, gt, sequence="toy")
    assert [o.name for o in objs] == ["toy_1", "toy_2"]
    one, two = objs
    assert one.frames == ["00001", "00002", "00003", "00004"]
    assert one.J.tolist() == [1.0, 1.0, 1.0, 1.0]
    # object 2 appears in 00002: scored on 00003 and 00004 only (00005 is the last frame)
    assert two.frames == ["00003", "00004"]
    assert two.J.tolist() == [1.0, 6 / 12]
    assert two.J_mean == 0.75 and two.J_recall == 0.5
    assert two.J_decay == 1.0 - 0.5  # N=2: bins [0], [0,1], [1], [1]
    # F, tolerance ceil(0.008 * sqrt(288)) = 1 px: after a one-column shift every boundary pixel matches
    assert boundary_tolerance((12, 12)) == 1
    assert two.F.tolist() == [1.0, 1.0]
    # the official protocol (objects of the first frame only) rejects label 2
    with pytest.raises(InputError, match="label 2"):
        evaluate_sequence(pred, gt, sequence="toy", object_mode="first-frame")
    # forcing first-appearance on a DAVIS-style sequence changes nothing for frame-0 objects
    gt_all = [g.copy() for g in gt]
    for g in gt_all:
        _square((12, 12), 7, 7, 3, 2, g)
    a = evaluate_sequence(pred, gt_all, object_mode="auto")
    b = evaluate_sequence(pred, gt_all, object_mode="first-appearance")
    assert [o.J.tolist() for o in a] == [o.J.tolist() for o in b] and a[1].frames == b[1].frames


def test_object_appearing_in_last_frames_is_skipped() -> None:
    shape = (8, 8)
    gt = [_square(shape, 1, 1, 3, 1) for _ in range(4)]
    _square(shape, 5, 5, 2, 2, gt[2])  # appears in the second-to-last frame: nothing left to score
    objs = evaluate_sequence([g.copy() for g in gt], gt)
    assert [o.object_id for o in objs] == [1]


def test_2016_mode_merges_objects() -> None:
    pred, gt = _mid_video_example()
    swapped = [np.where(p == 1, 2, np.where(p == 2, 1, p)).astype(np.uint8) for p in pred]
    objs = evaluate_sequence(swapped, [np.where(g > 0, g, 0) for g in gt], sequence="toy", year=2016)
    assert len(objs) == 1 and objs[0].name == "toy"
    assert objs[0].frames == ["00001", "00002", "00003", "00004"]
    assert objs[0].J[0] < 1.0 and objs[0].J[2] == 1.0  # frame 1 has an extra region, frame 3 is exact


def _write_sequence(root: Path, seq: str, frames: list[np.ndarray]) -> list[Path]:
    paths = []
    for t, f in enumerate(frames):
        p = root / seq / f"{t:05d}.png"
        _save_palette(f, p)
        paths.append(p)
    return paths


def test_errors_name_the_file(tmp_path: Path) -> None:
    shape = (16, 20)
    gt = [_square(shape, 2, 2, 5, 1) for _ in range(5)]
    for g in gt:
        _square(shape, 9, 9, 4, 2, g)
    _write_sequence(tmp_path / "gt", "s", gt)
    pred_paths = _write_sequence(tmp_path / "pred", "s", gt)
    assert evaluate(tmp_path / "pred", tmp_path / "gt").global_row().JF_mean == 1.0

    _save_palette(np.full(shape, 3, np.uint8), pred_paths[2])  # label 3 > 2 objects
    with pytest.raises(InputError, match=r"00002\.png.*label 3.*only 2 objects"):
        evaluate(tmp_path / "pred", tmp_path / "gt")

    pred_paths[2].unlink()
    with pytest.raises(InputError, match=r"missing prediction file .*s/00002\.png"):
        evaluate(tmp_path / "pred", tmp_path / "gt")

    _save_palette(np.zeros((16, 21), np.uint8), pred_paths[2])
    with pytest.raises(InputError, match=r"prediction .*00002\.png is 21x16 .* is 20x16"):
        evaluate(tmp_path / "pred", tmp_path / "gt")

    _save_palette(gt[2], pred_paths[2])
    pred_paths[0].unlink()  # the first and last predictions are never read (as in the official code)
    pred_paths[-1].unlink()
    assert evaluate(tmp_path / "pred", tmp_path / "gt").global_row().JF_mean == 1.0

    with pytest.raises(InputError, match=r"missing prediction folder .*nope"):
        evaluate(tmp_path / "pred", tmp_path / "gt", sequences=["s", "nope"])
    Image.fromarray(np.zeros((*shape, 3), np.uint8)).save(pred_paths[1])
    with pytest.raises(InputError, match=r"00001\.png has PNG mode RGB"):
        evaluate(tmp_path / "pred", tmp_path / "gt")


def test_grayscale_and_la_ground_truth(tmp_path: Path) -> None:
    shape = (30, 40)
    frames = []
    for t in range(5):
        m = np.zeros(shape, np.uint8)
        cv2.circle(m, (10 + 3 * t, 15), 7, 255, -1)
        frames.append(m)
    for t, m in enumerate(frames):
        p = tmp_path / "gt" / "seq" / f"{t:05d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        if t == 2:
            Image.fromarray(np.stack([m, np.full_like(m, 255)], -1), mode="LA").save(p)
        else:
            Image.fromarray(m, mode="L").save(p)
    # predictions: palette ids for some frames, grayscale 0/255 for others
    for t, m in enumerate(frames):
        p = tmp_path / "pred" / "seq" / f"{t:05d}.png"
        if t % 2:
            _save_palette((m > 0).astype(np.uint8), p)
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(m, mode="L").save(p)
    assert read_label_map(tmp_path / "gt" / "seq" / "00002.png")[1] is True
    for year in (2017, 2016):
        result = evaluate(tmp_path / "pred", tmp_path / "gt", year=year)
        assert len(result.objects) == 1
        assert result.objects[0].J.tolist() == [1.0, 1.0, 1.0]
        assert result.global_row().JF_mean == 1.0


def test_void_in_palette_ground_truth_is_background() -> None:
    shape = (10, 10)
    gt = [_square(shape, 2, 2, 3, 1) for _ in range(4)]
    for g in gt:
        g[8:, 8:] = 255  # void
    pred = [_square(shape, 2, 2, 3, 1) for _ in range(4)]
    objs = evaluate_sequence(pred, gt)
    assert len(objs) == 1 and objs[0].J.tolist() == [1.0, 1.0]


def test_json_and_temporal_stability(tmp_path: Path) -> None:
    pred, gt = _mid_video_example()
    from memvos.evaluation import EvaluationResult

    objs = evaluate_sequence(pred, gt, sequence="toy", temporal_stability=True)
    assert objs[0].T is not None and objs[0].T.shape == (3,)
    assert objs[0].T_mean == 0.0  # the same square in every frame
    result = EvaluationResult(objects=objs, sequences=["toy"])
    data = json.loads(write_json(result, tmp_path / "r.json").read_text())
    assert data["global"]["J-Mean"] == result.global_row().J_mean
    assert data["objects"][1]["J"] == [1.0, 0.5]
    assert "T-Mean (approx.)" in data["global"]


def test_temporal_stability_pair() -> None:
    a = np.zeros((60, 80), np.uint8)
    cv2.circle(a, (30, 30), 15, 1, -1)
    b = np.roll(a, (3, 5), axis=(0, 1))  # translated: same descriptors up to rounding at bin edges
    c = np.zeros_like(a)
    cv2.rectangle(c, (10, 20), (70, 35), 1, -1)
    assert temporal_stability_pair(a, a) == 0.0
    assert temporal_stability_pair(a, b) < 1e-3
    assert temporal_stability_pair(a, c) > 0.1
    assert math.isnan(temporal_stability_pair(a, np.zeros_like(a)))
