"""Training pipeline: samples, augmentations, one step lowers the loss, exact resume, DDP launch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from memvos.errors import MemvosError
from memvos.io.palette import DAVIS_PALETTE
from memvos.models.lite import LiteMemoryNetwork
from memvos.training import augment
from memvos.training.config import TrainConfig
from memvos.training.data import ClipSampler, index_davis
from memvos.training.losses import clip_loss
from memvos.training.trainer import Trainer

from .conftest import render_tiny_clip


def _write_dataset(root: Path, sequences: int = 2, frames: int = 6) -> Path:
    for s in range(sequences):
        rgb, labels = render_tiny_clip(num_frames=frames, height=64, width=80, seed=s)
        img_dir, ann_dir = root / "JPEGImages" / f"seq{s}", root / "Annotations" / f"seq{s}"
        img_dir.mkdir(parents=True)
        ann_dir.mkdir(parents=True)
        for t in range(frames):
            Image.fromarray(rgb[t]).save(img_dir / f"{t:05d}.jpg", quality=95)
            m = Image.fromarray(labels[t].astype(np.uint8), mode="P")
            m.putpalette(DAVIS_PALETTE.tobytes())
            m.save(ann_dir / f"{t:05d}.png")
    return root


def _config(root: Path, **kw) -> TrainConfig:
    base = dict(
        davis_roots=[str(root)],
        val_root=None,
        val_sequences=[],
        pretrained_backbone=False,
        static_photos=False,
        static_prob=0.5,
        paste_prob=0.5,
        crop_size=48,
        scale_range=(1.0, 1.2),
        batch_size=2,
        iterations=4,
        warmup_iters=1,
        num_workers=0,
        precision="fp32",
        log_every=1,
        checkpoint_minutes=1000.0,
        bootstrap_start=2,
        bootstrap_ratio=0.5,
        freeze_backbone_stride=4,
    )
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture()
def dataset(tmp_path: Path) -> Path:
    return _write_dataset(tmp_path / "data")


def test_samples_are_deterministic_and_well_formed(dataset: Path) -> None:
    cfg = _config(dataset)
    sampler = ClipSampler(cfg, index_davis(dataset), photos=[])
    a = sampler.sample((0, 0, 5, 1), 5)
    b = sampler.sample((0, 0, 5, 1), 5)
    c = sampler.sample((0, 0, 6, 1), 6)
    assert a["frames"].shape == (3, 3, 48, 48) and a["masks"].shape == (3, cfg.max_objects, 48, 48)
    assert torch.equal(a["frames"], b["frames"]) and torch.equal(a["masks"], b["masks"])
    assert not torch.equal(a["frames"], c["frames"])
    assert a["valid"].any()
    # every valid object is visible on the first frame; invalid slots are empty
    first = a["masks"][0].flatten(1).sum(1)
    assert (first[a["valid"]] > 0).all() and (a["masks"][:, ~a["valid"]] == 0).all()
    assert set(a["masks"].unique().tolist()) <= {0.0, 1.0}


def test_tps_identity_without_offsets() -> None:
    rng = np.random.default_rng(0)
    grid = augment.tps_grid(rng, 20, 30, max_offset=0.0)
    ys, xs = torch.linspace(-1, 1, 20), torch.linspace(-1, 1, 30)
    assert torch.allclose(grid[0, :, :, 0], xs.expand(20, 30), atol=1e-5)
    assert torch.allclose(grid[0, :, :, 1], ys[:, None].expand(20, 30), atol=1e-5)
    warped = augment.tps_grid(np.random.default_rng(1), 20, 30)
    assert not torch.allclose(warped, grid)


def test_hide_and_seek_hides_cells() -> None:
    img = torch.rand(3, 32, 32)
    out = augment.hide_and_seek(np.random.default_rng(0), img, grid=4, prob=1.0)
    assert torch.allclose(out, img.mean(dim=(1, 2), keepdim=True).expand_as(img))
    same = augment.hide_and_seek(np.random.default_rng(0), img, grid=4, prob=0.0)
    assert torch.equal(same, img)


def test_training_steps_lower_the_loss(dataset: Path) -> None:
    torch.manual_seed(0)
    cfg = _config(dataset)
    sampler = ClipSampler(cfg, index_davis(dataset), photos=[])
    samples = [sampler.sample((0, 0, 0, b), 0) for b in range(2)]
    batch = {k: torch.stack([s[k] for s in samples]) for k in samples[0]}
    model = LiteMemoryNetwork(pretrained_backbone=False).train()
    from memvos.memory.read import MemoryReader

    reader = MemoryReader(similarity=model.similarity)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    first, _ = clip_loss(model, batch, reader)
    for _ in range(8):
        loss, _ = clip_loss(model, batch, reader)
        opt.zero_grad()
        loss.backward()
        opt.step()
    last, stats = clip_loss(model, batch, reader)
    first, last = float(first.detach()), float(last.detach())
    assert last < 0.8 * first, (first, last)
    assert 0.0 <= stats["iou"] <= 1.0


def test_resume_reproduces_the_same_state(dataset: Path, tmp_path: Path) -> None:
    cfg = _config(dataset)
    straight = Trainer(cfg, tmp_path / "a", device="cpu", progress=False)
    straight.train(4)
    halves = Trainer(cfg, tmp_path / "b", device="cpu", progress=False)
    halves.train(2)
    resumed = Trainer(cfg, tmp_path / "b", device="cpu", progress=False)
    assert resumed.iteration == 2
    resumed.train(4)
    sa, sb = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    log = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == [1, 2, 3, 4]
    # exported fp16 weights load into the model with weights_only=True
    exported = torch.load(tmp_path / "b" / "last.pth", weights_only=True)
    assert all(v.dtype == torch.float16 for v in exported.values() if v.is_floating_point())


def test_validation_scores_held_out_sequences(dataset: Path, tmp_path: Path) -> None:
    from memvos.training.validate import davis_validator

    model = LiteMemoryNetwork(pretrained_backbone=False).eval()
    metrics = davis_validator(dataset, ["seq1"], tmp_path / "val", precision="fp32")(model)
    assert 0.0 <= metrics["J&F-Mean"] <= 1.0
    assert len(list((tmp_path / "val" / "seq1").glob("*.png"))) == 6


def test_validation_leaves_no_flush_to_zero_behind_for_training(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from memvos import denormals
    from memvos.training.validate import davis_validator

    from .test_denormals import flushed

    if not torch.set_flush_denormal(False):
        pytest.skip("no FTZ/DAZ on this CPU")
    model = LiteMemoryNetwork(pretrained_backbone=False).eval()
    turned_on: list[bool] = []
    real = denormals.set_flush_denormals

    def spy(on: bool) -> int:
        turned_on.append(on)
        return real(on)

    monkeypatch.setattr(denormals, "set_flush_denormals", spy)
    davis_validator(dataset, ["seq1"], tmp_path / "val", precision="fp32-fast")(model)
    assert True in turned_on  # the fast sessions ran flushed ...
    assert not flushed().any()  # ... and training resumes in IEEE mode


@pytest.mark.slow
def test_ddp_two_process_cpu_run(dataset: Path, tmp_path: Path) -> None:
    cfg = _config(dataset, iterations=2)
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(cfg.to_dict()))
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29533",
            "-m",
            "memvos",
            "train",
            "--config",
            str(cfg_path),
            "--out",
            str(out),
            "--quiet",
            "--no-val",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == [1, 2]  # only rank 0 logs
    assert (out / "checkpoint.pth").is_file()


def test_longer_clips_and_frame_limits(dataset: Path) -> None:
    cfg = _config(dataset, frames_per_sample=5, static_prob=0.0)
    seqs = index_davis(dataset, frame_limits={"seq0": [0, 5]})
    assert [len(s.frames) for s in seqs] == [5, 6]
    assert seqs[0].frames[-1].name == "00004.jpg"  # frames 5.. of seq0 are held out
    sample = ClipSampler(cfg, seqs, photos=[]).sample((0, 0, 3, 0), 3)
    assert sample["frames"].shape == (5, 3, 48, 48) and sample["masks"].shape[0] == 5
    model = LiteMemoryNetwork(pretrained_backbone=False).train()
    from memvos.memory.read import MemoryReader

    batch = {k: v[None] for k, v in sample.items()}
    loss, stats = clip_loss(model, batch, MemoryReader(similarity=model.similarity))
    assert torch.isfinite(loss) and 0.0 <= stats["iou"] <= 1.0  # the loss reads a 4-frame memory
    with pytest.raises(MemvosError, match="frames_per_sample must be at least 3"):
        TrainConfig.from_file(None, ["frames_per_sample=2"])


def test_distractor_is_a_moving_copy_whose_masks_match_its_pixels(dataset: Path) -> None:
    cfg = _config(dataset, max_objects=3)
    sampler = ClipSampler(cfg, index_davis(dataset), photos=[])
    t, s = 4, 40
    frames = torch.rand(t, 3, s, s) * 0.2  # dark, textured background
    masks = torch.zeros(t, 1, s, s)
    for i in range(t):
        masks[i, 0, 10:22, 5 + i : 17 + i] = 1  # one square object moving right
        frames[i][:, masks[i, 0] > 0] = 0.9  # bright object
    seen = {"labelled": 0, "background": 0, "front": 0, "behind": 0}
    obj = masks[:, 0] > 0
    for seed in range(40):
        out_f, out_m = sampler._distractor(np.random.default_rng(seed), frames, masks)
        again_f, again_m = sampler._distractor(np.random.default_rng(seed), frames, masks)
        assert torch.equal(out_f, again_f) and torch.equal(out_m, again_m)  # a pure function of the seed
        assert (out_m.sum(1) <= 1).all()  # no pixel belongs to two objects
        changed = (out_f - frames).abs().amax(1) > 1e-6  # (T, S, S)
        if out_m.shape[1] == 2:  # the copy is a tracked object: its mask covers the pasted, bright pixels
            seen["labelled"] += 1
            copy = out_m[:, 1] > 0
            assert copy.any() and out_f.permute(1, 0, 2, 3)[:, copy].median() > 0.7
        else:
            seen["background"] += 1
        lost = obj & (out_m[:, 0] == 0)
        if lost.any():  # the copy passed in front: the object's mask lost exactly the pixels painted over
            seen["front"] += 1
            assert changed[lost].float().mean() > 0.9
        else:  # behind the object: its pixels are untouched (occlusion order)
            seen["behind"] += 1
            assert not changed[obj].any()
    assert all(v > 0 for v in seen.values()), seen
