"""Interactive segmentation: PML loss and training, retrieval, boxes, propagation, persistence, bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from memvos.cli import main as cli_main
from memvos.errors import InputError
from memvos.interactive import video as video_mod
from memvos.interactive.annotations import ObjectAnnotation, Scribble, UnknownObjectError
from memvos.interactive.embedding import PixelEmbedder, load_embedder, save_embedder
from memvos.interactive.frames import FrameStore
from memvos.interactive.loss import closest_distances, pml_triplet_loss
from memvos.interactive.retrieval import references, retrieve
from memvos.interactive.video import InteractiveVideo
from memvos.io.frames import FrameSource
from memvos.models.lite import LiteMemoryNetwork
from memvos.training.config import TrainConfig
from memvos.training.pml import PMLSettings, cell_labels, pml_batch_loss
from tests.conftest import render_tiny_clip

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def lite() -> LiteMemoryNetwork:
    torch.manual_seed(0)
    return LiteMemoryNetwork(pretrained_backbone=False).eval()


@pytest.fixture(scope="module")
def clip() -> tuple[np.ndarray, np.ndarray]:
    return render_tiny_clip()  # (8, 64, 96, 3) frames, (8, 64, 96) labels {0, 1, 2}


def _iv(lite, clip, project=None, **kw) -> InteractiveVideo:
    frames, _ = clip
    iv = InteractiveVideo(lite, PixelEmbedder.from_model(lite), session_options={"precision": "fp32"}, **kw)
    return iv.init_state(FrameStore(FrameSource.from_arrays(frames)), project_dir=project)


# ---------------------------------------------------------------------------- loss
def test_triplet_loss_hand_computed() -> None:
    anchors = torch.tensor([[0.0, 0.0], [3.0, 0.0], [9.0, 9.0]])
    anchor_labels = torch.tensor([1, 0, 7])  # label 7 has no positive: left out
    pool = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 3.0], [4.0, 0.0]])
    pool_labels = torch.tensor([1, 1, 0, 0])
    d_pos, d_neg, valid = closest_distances(anchors, anchor_labels, pool, pool_labels)
    # anchor 0: closest positive (1, 0) at 1, closest negative (0, 3) at 3
    # anchor 1: closest positive (4, 0) at 1, closest negative (1, 0) at 2
    assert d_pos[:2].tolist() == pytest.approx([1.0, 1.0])
    assert d_neg[:2].tolist() == pytest.approx([3.0, 2.0])
    assert valid.tolist() == [True, True, False]
    # alpha 2.5: max(0, 1 - 3 + 2.5) = 0.5 and max(0, 1 - 2 + 2.5) = 1.5 -> mean 1.0
    assert float(pml_triplet_loss(anchors, anchor_labels, pool, pool_labels, alpha=2.5)) == pytest.approx(1.0)
    # alpha 1.5: 0 and 0.5 -> 0.25 (the hinge clips anchor 0)
    assert float(pml_triplet_loss(anchors, anchor_labels, pool, pool_labels, alpha=1.5)) == pytest.approx(
        0.25
    )
    assert float(pml_triplet_loss(anchors, anchor_labels, pool, pool_labels, alpha=0.5)) == 0.0


def test_triplet_loss_gradient_only_through_closest() -> None:
    anchors = torch.tensor([[0.0, 0.0]], requires_grad=True)
    pool = torch.tensor([[1.0, 0.0], [5.0, 0.0], [0.0, 2.0], [0.0, 7.0]], requires_grad=True)
    loss = pml_triplet_loss(anchors, torch.tensor([1]), pool, torch.tensor([1, 1, 0, 0]), alpha=2.0)
    assert float(loss.detach()) == pytest.approx(1.0)  # 1 - 2 + 2
    loss.backward()
    assert pool.grad[1].abs().sum() == 0 and pool.grad[3].abs().sum() == 0  # not the closest ones
    assert pool.grad[0].abs().sum() > 0 and pool.grad[2].abs().sum() > 0


def test_triplet_loss_without_usable_anchor_is_zero_with_graph() -> None:
    a = torch.ones(2, 3, requires_grad=True)
    loss = pml_triplet_loss(a, torch.tensor([1, 1]), torch.ones(4, 3), torch.tensor([1, 1, 1, 1]))
    assert float(loss.detach()) == 0.0
    loss.backward()


def test_cell_labels_ignore_boundary_cells() -> None:
    masks = torch.zeros(1, 16, 16)
    masks[0, :, :6] = 1  # cells of column 0 are 6/8 object, column 1 fully background
    labels, usable = cell_labels(masks, 0.75)
    assert labels.tolist() == [[1, 0], [1, 0]]
    assert usable.all()
    labels, usable = cell_labels(masks, 0.8)
    assert usable.tolist() == [[False, True], [False, True]]


def test_pml_training_steps_lower_the_loss(lite, clip) -> None:
    frames, labels = clip
    idx = [0, 2, 4]
    f = torch.from_numpy(frames[idx]).permute(0, 3, 1, 2).float().div(255)[None]  # (1, 3, 3, 64, 96)
    m = torch.stack([torch.from_numpy(labels[idx] == k) for k in (1, 2)], dim=1).float()[None]
    batch = {"frames": f, "masks": m}
    embedder = PixelEmbedder.from_model(lite)
    opt = torch.optim.Adam(embedder.head.parameters(), lr=2e-3)
    settings = PMLSettings(anchors=64, alpha=1.0)
    losses = []
    for it in range(25):
        loss, stats = pml_batch_loss(embedder, batch, settings, torch.Generator().manual_seed(it))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(stats["loss"])
    assert all(p.grad is None for p in embedder.backbone.parameters())  # the backbone is frozen
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:3]), losses


def _tiny_davis(root: Path, clip) -> Path:
    frames, labels = clip
    for seq in ("a", "b"):
        (root / "JPEGImages" / seq).mkdir(parents=True)
        (root / "Annotations" / seq).mkdir(parents=True)
        for t in range(len(frames)):
            Image.fromarray(frames[t]).save(root / "JPEGImages" / seq / f"{t:05d}.jpg")
            Image.fromarray(((labels[t] == (1 if seq == "a" else 2)) * 255).astype(np.uint8)).save(
                root / "Annotations" / seq / f"{t:05d}.png"
            )
    return root


def test_pml_stage_of_memvos_train_checkpoints_logs_exports_and_resumes(tmp_path, clip) -> None:
    data = _tiny_davis(tmp_path / "davis", clip)
    cfg = {
        "stage": "pml",
        "pml": {"backbone_init": "random", "anchors": 32},
        "davis_roots": [str(data)],
        "val_root": None,
        "crop_size": 64,
        "scale_range": [1.0, 1.0],
        "batch_size": 2,
        "num_workers": 0,
        "static_photos": False,
        "paste_prob": 0.0,
        "log_every": 1,
        "warmup_iters": 1,
        "precision": "fp32",
    }
    cfg_path = tmp_path / "pml.json"
    cfg_path.write_text(json.dumps(cfg))
    run, export = tmp_path / "run", tmp_path / "pml-lite.pth"
    args = ["train", "--config", str(cfg_path), "--out", str(run), "--iterations", "2", "--quiet"]
    assert cli_main([*args, "--export", str(export), "--device", "cpu"]) == 0
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == [1, 2]
    assert all(math.isfinite(r["loss"]) and r["threshold"] > 0 for r in log)
    embedder = load_embedder(export)
    assert embedder.head.dim == 32 and embedder.threshold == pytest.approx(log[-1]["threshold"])
    assert export.stat().st_size < 4_000_000
    assert all(v.dtype == torch.float16 for v in torch.load(export, weights_only=True)["head"].values())
    args[args.index("2")] = "3"
    assert cli_main([*args, "--device", "cpu"]) == 0  # resumes at 2, runs one more
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == [1, 2, 3]


def test_train_config_stage_and_unknown_pml_keys(tmp_path) -> None:
    cfg = TrainConfig.from_file(Path(__file__).resolve().parents[1] / "configs" / "pml-lite.json")
    assert cfg.stage == "pml"
    assert PMLSettings.from_dict(cfg.pml).backbone_init == "imagenet"  # the shipped pml-lite.pth run
    assert TrainConfig().stage == "memory"
    with pytest.raises(Exception, match="unknown pml config keys: nope"):
        PMLSettings.from_dict({"nope": 1})


def test_embedder_weights_round_trip_and_share_backbone(tmp_path, lite) -> None:
    embedder = PixelEmbedder.from_model(lite)
    path = save_embedder(tmp_path / "e.pth", embedder, threshold=1.25, source="test")
    loaded = load_embedder(path)
    assert loaded.threshold == 1.25 and loaded.backbone is not lite.backbone
    img = torch.rand(1, 3, 70, 100)
    ref = embedder(img)
    assert ref.shape == (1, 34, 9, 13)
    assert torch.allclose(loaded(img), ref, atol=0.05)  # fp16 file
    half = LiteMemoryNetwork(pretrained_backbone=False)
    half.backbone.load_state_dict({k: v.half().float() for k, v in lite.backbone.state_dict().items()})
    assert loaded.share_backbone(half) and loaded.backbone is half.backbone
    assert not load_embedder(path).share_backbone(LiteMemoryNetwork(pretrained_backbone=False))


def test_default_embedder_without_weights_uses_raw_features(lite, tmp_path, monkeypatch, caplog) -> None:
    from memvos.interactive import embedding

    monkeypatch.setattr(embedding, "SHIPPED_WEIGHTS", tmp_path / "missing.pth")
    emb = embedding.default_embedder(lite)
    assert "no trained pixel-embedding weights" in caplog.text
    assert isinstance(emb.head, embedding.RawFeatureHead) and emb.backbone is lite.backbone
    assert emb.threshold is None and emb.embed_frame(np.zeros((64, 96, 3), np.uint8)).shape == (154, 8, 12)
    path = save_embedder(tmp_path / "e.pth", PixelEmbedder.from_model(lite), 1.0, "test")
    assert isinstance(embedding.default_embedder(lite, path).head, embedding.PixelEmbeddingHead)


# ---------------------------------------------------------------------------- retrieval
def _toy_embeddings(h: int = 8, w: int = 12) -> tuple[torch.Tensor, np.ndarray]:
    """(3, h, w): cells of a 3x4 block (the object) are (1, 0, 0), the rest (0, 1, 0); no coordinates."""
    obj = np.zeros((h, w), bool)
    obj[2:5, 3:7] = True
    emb = torch.zeros(3, h, w)
    emb[0][torch.from_numpy(obj)] = 1
    emb[1][torch.from_numpy(~obj)] = 1
    return emb, obj


def test_retrieval_positive_and_negative_clicks() -> None:
    emb, obj = _toy_embeddings()
    hw = (64, 96)
    ann = ObjectAnnotation(points=[(4 * 8 + 3, 3 * 8 + 3, 1), (10 * 8 + 1, 6 * 8 + 1, 0)])
    labels = retrieve(emb, [references(5, ann, (8, 12))], hw, threshold=None)
    expected = np.kron(obj, np.ones((8, 8), bool))
    assert labels.dtype == np.int32 and set(np.unique(labels)) == {0, 5}
    inner = np.zeros_like(expected)
    inner[2 * 8 + 4 : 5 * 8 - 4, 3 * 8 + 4 : 7 * 8 - 4] = True
    assert (labels[inner] == 5).all() and (
        labels[~np.kron(np.pad(obj, 1)[:-2, :-2] | np.pad(obj, 1)[2:, 2:] | obj, np.ones((8, 8), bool))] == 0
    ).all()
    iou = ((labels == 5) & expected).sum() / ((labels == 5) | expected).sum()
    assert iou > 0.8


def test_retrieval_single_positive_click_uses_threshold() -> None:
    emb, obj = _toy_embeddings()
    ann = ObjectAnnotation(points=[(4 * 8, 3 * 8, 1)])
    labels = retrieve(emb, [references(1, ann, (8, 12))], (64, 96), threshold=0.5)
    assert ((labels == 1)[4::8, 4::8] == obj).all()
    # no threshold and no negative: estimated from the frame, still not the whole frame
    labels = retrieve(emb, [references(1, ann, (8, 12))], (64, 96), threshold=None)
    assert 0 < (labels == 1).mean() < 0.5


def test_retrieval_two_objects_and_scribbles() -> None:
    emb, obj = _toy_embeddings()
    emb = torch.cat([emb, torch.zeros(1, 8, 12)])
    emb[3, :, 8:] = 2.0  # a second object: the columns 8..11
    emb[:2, :, 8:] = 0
    a = ObjectAnnotation(scribbles=[Scribble([(3 * 8 + 2, 3 * 8 + 4), (6 * 8 + 6, 3 * 8 + 4)], True)])
    b = ObjectAnnotation(points=[(10 * 8, 2 * 8, 1)])
    bg = ObjectAnnotation(points=[(4, 60, 0)])
    refs = [references(1, a, (8, 12)), references(2, b, (8, 12))]
    refs[0].neg = np.union1d(refs[0].neg, references(1, bg, (8, 12)).neg)
    labels = retrieve(emb, refs, (64, 96), threshold=None)
    cells = labels[4::8, 4::8]
    assert (cells[obj] == 1).all()
    assert (cells[:, 8:] == 2).all()
    assert (cells[:, :8][~obj[:, :8]] == 0).all()


def test_scribble_cells_follow_the_polyline() -> None:
    ann = ObjectAnnotation(scribbles=[Scribble([(4, 20), (90, 20)], True)])
    refs = references(1, ann, (8, 12))
    assert sorted(refs.pos.tolist()) == [2 * 12 + j for j in range(12)]


def test_box_is_resolved_inside_the_box() -> None:
    emb, obj = _toy_embeddings()
    box = (3 * 8 - 5, 2 * 8 - 5, 7 * 8 + 5, 5 * 8 + 5)  # a loose box around the object
    refs = [references(3, ObjectAnnotation(box=box), (8, 12))]
    labels = retrieve(emb, refs, (64, 96))
    expected = np.kron(obj, np.ones((8, 8), bool))
    iou = ((labels == 3) & expected).sum() / ((labels == 3) | expected).sum()
    assert iou > 0.85
    x0, y0, x1, y1 = box
    outside = np.ones_like(expected)
    outside[y0:y1, x0:x1] = False
    assert not (labels[outside] == 3).any()


def test_box_seed_is_central_and_outside_is_negative() -> None:
    refs = references(1, ObjectAnnotation(box=(16, 16, 80, 48)), (8, 12))
    pos = {(int(c) // 12, int(c) % 12) for c in refs.pos}
    assert pos and all(2 <= i <= 5 and 4 <= j <= 7 for i, j in pos)
    neg = {(int(c) // 12, int(c) % 12) for c in refs.neg}
    assert (0, 0) in neg and (3, 5) not in neg and not any(2 <= i < 6 and 2 <= j < 10 for i, j in neg)


# ---------------------------------------------------------------------------- InteractiveVideo
def test_click_on_object_gives_mask_near_click_and_reuses_embeddings(lite, clip, monkeypatch) -> None:
    iv = _iv(lite, clip, embedding_cache=2)
    calls = []
    orig = iv.embedder.embed_frame
    monkeypatch.setattr(iv.embedder, "embed_frame", lambda rgb: calls.append(1) or orig(rgb))
    obj = iv.add_object("square")
    i, ids, labels = iv.add_new_points_or_box(0, obj.id, points=[[14, 20]], labels=[1])
    assert (i, ids) == (0, [obj.id]) and labels.shape == (64, 96)
    assert labels[20, 14] == obj.id
    iv.add_new_points_or_box(0, obj.id, points=[[80, 5]], labels=[0])
    assert iv.labels(0)[5, 80] == 0
    assert len(calls) == 1  # the second click re-ran the retrieval only
    for f in (1, 2, 3):
        iv.add_new_points_or_box(f, obj.id, points=[[14, 20]])
    assert len(iv._embeddings) == 2  # LRU bound


def test_box_on_frame(lite, clip) -> None:
    iv = _iv(lite, clip)
    obj = iv.add_object()
    _, _, labels = iv.add_new_points_or_box(2, obj.id, box=[10, 12, 40, 36])
    assert labels[24, 25] == obj.id
    assert not (labels[:, 45:] == obj.id).any() and not (labels[40:] == obj.id).any()


def test_propagation_forward_and_backward_from_a_correction(lite, clip, monkeypatch) -> None:
    frames, gt = clip
    steps: list[bool] = []

    class Spy(video_mod.InferenceSession):
        def step(self, image, mask=None, objects=None):
            steps.append(mask is not None)
            return super().step(image, mask=mask, objects=objects)

    monkeypatch.setattr(video_mod, "InferenceSession", Spy)
    iv = _iv(lite, clip)
    a, b = iv.add_object("square"), iv.add_object("disc")
    iv.add_new_mask(0, a.id, gt[0] == 1)
    iv.add_new_mask(0, b.id, gt[0] == 2)
    out = list(iv.propagate_in_video(0))
    assert [i for i, _, _ in out] == list(range(8)) and steps == [True] + [False] * 7
    assert (out[0][2] == gt[0]).all()
    assert all(iv.has_prediction(i) for i in range(8))
    # a correction on frame 5 propagates from there forward and backward
    correction = gt[5] == 1
    iv.add_new_mask(5, a.id, correction)
    steps.clear()
    visited = []
    n = iv.propagate(5, "both", progress=lambda done, total: visited.append((done, total)))
    assert n == 3 + 6 and visited[-1] == (9, 9)
    # forward pass: frame 0 primed first (outside the pass), then 5 (given), 6, 7; backward: 5, 4, ..., 0
    assert steps == [True, True, False, False] + [True, False, False, False, False, True]
    assert (iv.labels(5)[correction] == a.id).all()
    assert (iv.labels(0) == gt[0]).all()
    rev = [i for i, _, _ in iv.propagate_in_video(7, reverse=True)]
    assert rev == list(range(7, -1, -1))


def test_persistence_and_restore(lite, clip, tmp_path) -> None:
    proj = tmp_path / "proj"
    iv = _iv(lite, clip, project=proj)
    a = iv.add_object("square", "#ff0000")
    b = iv.add_object("disc")
    iv.add_new_points_or_box(1, a.id, points=[[20, 20], [70, 50]], labels=[1, 0])
    iv.add_scribble(1, b.id, [[70, 35], [80, 38]], positive=True)
    iv.add_new_points_or_box(3, a.id, box=[5, 5, 40, 40])
    iv.add_new_mask(4, b.id, clip[1][4] == 2)
    iv.update_object(b.id, name="ball", color="#00ff00")
    iv.propagate_in_video(1, max_frame_num_to_track=2).__next__()
    before = {f: iv.labels(f).copy() for f in range(8)}
    data = json.loads((proj / "project.json").read_text())
    assert set(data["annotations"]) == {"1", "3", "4"} and not list(proj.glob(".*tmp"))
    del iv
    iv2 = _iv(lite, clip, project=proj)
    assert [(o.id, o.name, o.color) for o in iv2.objects.all()] == [
        (1, "square", "#ff0000"),
        (2, "ball", "#00ff00"),
    ]
    assert iv2.annotated_frames() == [1, 3, 4]
    assert iv2.annotations[1][a.id].points == [(20.0, 20.0, 1), (70.0, 50.0, 0)]
    for f in range(8):
        assert (iv2.labels(f) == before[f]).all(), f
    # a project of another video is refused
    other = InteractiveVideo(lite, PixelEmbedder.from_model(lite))
    with pytest.raises(InputError, match="belongs to another video"):
        other.init_state(FrameStore(FrameSource.from_arrays(clip[0][:5])), project_dir=proj)


def test_bad_input_is_refused_and_loses_nothing(lite, clip, tmp_path) -> None:
    proj = tmp_path / "proj"
    iv = _iv(lite, clip, project=proj)
    a = iv.add_object()
    iv.add_new_points_or_box(0, a.id, points=[[10, 10]])
    saved = (proj / "project.json").read_text()
    with pytest.raises(InputError, match=r"click at \(200, 10\) is outside the 96x64 frame"):
        iv.add_new_points_or_box(0, a.id, points=[[5, 5], [200, 10]])
    with pytest.raises(UnknownObjectError, match="unknown object 9"):
        iv.add_new_points_or_box(0, 9, points=[[5, 5]])
    with pytest.raises(InputError, match="frame 8 does not exist"):
        iv.add_new_points_or_box(8, a.id, points=[[5, 5]])
    with pytest.raises(InputError, match="2 points but 1 labels"):
        iv.add_new_points_or_box(0, a.id, points=[[5, 5], [6, 6]], labels=[1])
    with pytest.raises(InputError, match="empty or outside"):
        iv.add_new_points_or_box(0, a.id, box=[100, 70, 120, 90])
    with pytest.raises(InputError, match="mask is"):
        iv.add_new_mask(0, a.id, np.ones((10, 10), bool))
    assert iv.annotations[0][a.id].points == [(10.0, 10.0, 1)]
    assert (proj / "project.json").read_text() == saved
    iv.remove_object(a.id)
    with pytest.raises(UnknownObjectError, match="unknown object 1"):
        iv.add_scribble(0, a.id, [[5, 5]])
    with pytest.raises(InputError, match="nothing to propagate"):
        list(iv.propagate_in_video())


def test_video_that_fails_to_decode(tmp_path, clip, lite) -> None:
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
    iv = InteractiveVideo(lite, PixelEmbedder.from_model(lite))
    with pytest.raises(InputError, match="broken.mp4"):
        iv.init_state(bad)
    folder = tmp_path / "frames"
    folder.mkdir()
    for t in range(3):
        Image.fromarray(clip[0][t]).save(folder / f"{t:05d}.jpg")
    data = (folder / "00001.jpg").read_bytes()
    (folder / "00001.jpg").write_bytes(data[: len(data) // 2])  # truncated JPEG: header fine, pixels not
    iv.init_state(folder)
    obj = iv.add_object()
    with pytest.raises(InputError, match="cannot decode frame 1"):
        iv.add_new_points_or_box(1, obj.id, points=[[5, 5]])
    iv.add_new_points_or_box(0, obj.id, points=[[5, 5]])  # the other frames still work
    assert iv.annotated_frames() == [0]


def test_video_file_is_decoded_once_for_random_access(tmp_path, clip) -> None:
    from memvos.io.overlay import OverlayWriter

    path = tmp_path / "clip.mp4"
    with OverlayWriter(path, fps=10) as w:
        for f in clip[0]:
            w.write(f, np.zeros(f.shape[:2], np.int32))
    store = FrameStore(path, cache_dir=tmp_path / "cache")
    assert len(store) == 8 and store[7].shape == (64, 96, 3)
    assert len(list((tmp_path / "cache").glob("*.png"))) == 8
    assert np.abs(store[3].astype(int) - clip[0][3].astype(int)).mean() < 12
