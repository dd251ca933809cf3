"""``memvos train`` stage "pml": the pixel-embedding head for interactive segmentation (PML).

The memvos-lite backbone is frozen (default: the shipped memvos-lite weights; ImageNet when they are
missing; see ``pml.backbone_init``); only :class:`memvos.interactive.embedding.PixelEmbeddingHead` learns.
A sample is three frames of one video (:class:`memvos.training.data.ClipSampler`, the same clips and
augmentations as the memory stage): anchors are sampled from the first frame's embedding cells, the
positives/negatives pool is every cell of the two others; the loss is PML's modified triplet loss
(:func:`memvos.interactive.loss.pml_triplet_loss`). Config keys of the stage live in ``TrainConfig.pml``
(:class:`PMLSettings`). Checkpoints (``checkpoint.pth``, resumable), ``log.jsonl``, a progress bar and the
fp16 embedder ``last.pth`` in the run folder, like the main trainer.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from memvos.errors import MemvosError
from memvos.inference.session import cpu_supports_bf16
from memvos.interactive.embedding import PixelEmbedder, PixelEmbeddingHead, save_embedder
from memvos.interactive.loss import closest_distances, pml_triplet_loss
from memvos.models.lite import LiteMemoryNetwork
from memvos.models.registry import load_model, shipped_weights_path
from memvos.models.weights import load_weights, read_state_dict
from memvos.training.config import TrainConfig
from memvos.training.data import ClipSampler, SampleStream, collate, index_davis
from memvos.training.trainer import _autocast, _lr_factor

logger = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pth"
LOG = "log.jsonl"
EXPORT = "last.pth"
STRIDE = 8


@dataclass
class PMLSettings:
    """The ``pml`` block of a training config.

    backbone_init: "auto" (shipped memvos-lite weights if present, else ImageNet), "memvos-lite",
    "imagenet", "random" (tests), or the path of a memvos-lite weights file (also taken from
    ``init_weights`` when set).
    """

    dim: int = 32
    hidden: int = 64
    coord_weight: float = 1.0
    alpha: float = 1.0
    anchors: int = 256
    min_agreement: float = 0.75  # a cell is labelled when this fraction of its pixels agree (else ignored)
    backbone_init: str = "auto"

    @classmethod
    def from_dict(cls, data: dict | None) -> PMLSettings:
        data = dict(data or {})
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise MemvosError(f"unknown pml config keys: {', '.join(unknown)}")
        return cls(**data)


def build_backbone(init: str) -> tuple[torch.nn.Module, str]:
    """The frozen backbone for ``init`` (see :class:`PMLSettings`) and a description of its weights."""
    if init == "auto":
        shipped = shipped_weights_path("memvos-lite")
        init = "memvos-lite" if shipped is not None and shipped.is_file() else "imagenet"
        if init == "imagenet":
            logger.warning("shipped memvos-lite weights missing (%s): PML backbone from ImageNet", shipped)
    if init == "memvos-lite":
        model = load_model("memvos-lite")
    elif init in ("imagenet", "random"):
        model = LiteMemoryNetwork(pretrained_backbone=init == "imagenet")
    else:
        model = LiteMemoryNetwork(pretrained_backbone=False)
        load_weights(model, read_state_dict(init), source=init)
    backbone = model.backbone
    for p in backbone.parameters():
        p.requires_grad_(False)
    return backbone.eval(), init


def cell_labels(masks: Tensor, min_agreement: float) -> tuple[Tensor, Tensor]:
    """masks (..., O, H, W) {0, 1} -> labels (..., H/8, W/8) long (0 background, k = slot k-1) and usable
    (..., H/8, W/8) bool (cells where at least ``min_agreement`` of the pixels have that label)."""
    lead, (o, h, w) = masks.shape[:-3], masks.shape[-3:]
    frac = F.avg_pool2d(masks.reshape(-1, 1, h, w).float(), STRIDE).view(*lead, o, h // STRIDE, w // STRIDE)
    bg = (1 - frac.sum(-3, keepdim=True)).clamp(min=0)
    conf, labels = torch.cat([bg, frac], dim=-3).max(dim=-3)
    return labels, conf >= min_agreement


def sample_anchors(labels: Tensor, usable: Tensor, n: int, generator: torch.Generator) -> Tensor:
    """Indices of up to ``n`` usable cells of a flat (P,) label map, half of them on objects if possible."""
    fg = torch.nonzero(usable & (labels > 0)).flatten()
    bg = torch.nonzero(usable & (labels == 0)).flatten()
    fg = fg[torch.randperm(len(fg), generator=generator)]
    bg = bg[torch.randperm(len(bg), generator=generator)]
    k_fg = min(len(fg), max(n // 2, n - len(bg)))
    return torch.cat([fg[:k_fg], bg[: n - k_fg]])


def pml_batch_loss(
    embedder: PixelEmbedder, batch: dict[str, Tensor], settings: PMLSettings, generator: torch.Generator
) -> tuple[Tensor, dict[str, float]]:
    """Triplet loss of a batch: frames (B, 3, 3, S, S), masks (B, 3, O, S, S), S a multiple of 16.

    Frame 0 of each sample gives the anchors, frames 1 and 2 the pool. Returns (loss, stats) with the mean
    closest-positive / closest-negative distances and the fraction of anchors with a non-zero loss.
    """
    frames, masks = batch["frames"], batch["masks"]
    b, t = frames.shape[:2]
    emb = embedder(frames.flatten(0, 1)).float()
    d = emb.shape[1]
    emb = emb.view(b, t, d, -1)  # (B, T, D, P)
    labels, usable = cell_labels(masks, settings.min_agreement)
    labels, usable = labels.flatten(2).to(emb.device), usable.flatten(2).to(emb.device)  # (B, T, P)
    losses, d_pos_all, d_neg_all = [], [], []
    for i in range(b):
        idx = sample_anchors(labels[i, 0].cpu(), usable[i, 0].cpu(), settings.anchors, generator).to(
            emb.device
        )
        if len(idx) == 0:
            continue
        anchors = emb[i, 0].t()[idx]
        pool_ok = usable[i, 1:].flatten()
        pool = emb[i, 1:].permute(0, 2, 1).reshape(-1, d)[pool_ok]
        pool_labels = labels[i, 1:].flatten()[pool_ok]
        anchor_labels = labels[i, 0][idx]
        losses.append(pml_triplet_loss(anchors, anchor_labels, pool, pool_labels, settings.alpha))
        with torch.no_grad():
            dp, dn, valid = closest_distances(anchors, anchor_labels, pool, pool_labels)
            d_pos_all.append(dp[valid])
            d_neg_all.append(dn[valid])
    if not losses:
        zero = emb.sum() * 0.0
        return zero, {"loss": 0.0, "d_pos": 0.0, "d_neg": 0.0, "active": 0.0}
    loss = torch.stack(losses).mean()
    dp, dn = torch.cat(d_pos_all), torch.cat(d_neg_all)
    stats = {
        "loss": float(loss.detach()),
        "d_pos": float(dp.mean()) if len(dp) else 0.0,
        "d_neg": float(dn.mean()) if len(dn) else 0.0,
        "active": float((dp - dn + settings.alpha > 0).float().mean()) if len(dp) else 0.0,
    }
    return loss, stats


class PMLTrainer:
    """Trains the pixel-embedding head in ``out_dir`` (interface of :class:`memvos.training.trainer.Trainer`:
    ``train(iterations)``, ``close()``, ``rank``, ``device``; single process)."""

    def __init__(self, cfg: TrainConfig, out_dir: str | Path, device: str = "auto", progress: bool = True):
        self.cfg = cfg
        self.settings = PMLSettings.from_dict(cfg.pml)
        self.out = Path(out_dir)
        if int(os.environ.get("WORLD_SIZE", 1)) > 1:
            raise MemvosError("the pml stage trains in one process (no torchrun)")
        self.rank, self.world = 0, 1
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.progress = progress
        precision = cfg.precision
        if precision == "auto":
            precision = "fp16" if self.device.type == "cuda" else ("bf16" if cpu_supports_bf16() else "fp32")
        self.precision = precision
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        s = self.settings
        backbone, self.backbone_source = build_backbone(cfg.init_weights or s.backbone_init)
        ch = backbone.stage_channels
        head = PixelEmbeddingHead(ch[8], ch[16], dim=s.dim, hidden=s.hidden, coord_weight=s.coord_weight)
        self.embedder = PixelEmbedder(backbone, head).to(self.device)
        self.embedder.backbone.eval()
        self.optimizer = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16" and self.device.type == "cuda")
        self.iteration = 0
        self.threshold: float | None = None
        self._resume()

    # -------------------------------------------------------------- state
    def _resume(self) -> None:
        path = self.out / CHECKPOINT
        if not path.is_file():
            return
        state = torch.load(path, map_location="cpu", weights_only=False)
        if state.get("stage") != "pml":
            raise MemvosError(f"{path} is not a pml-stage checkpoint; use another --out folder")
        self.embedder.backbone.load_state_dict(state["backbone"])
        self.embedder.head.load_state_dict(state["head"])
        self.optimizer.load_state_dict(state["optimizer"])
        if "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.iteration = state["iteration"]
        self.threshold = state.get("threshold")
        self.backbone_source = state.get("backbone_source", self.backbone_source)
        torch.set_rng_state(state["torch_rng"])
        logger.info("resumed %s at iteration %d", path, self.iteration)

    def save_checkpoint(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        state = {
            "stage": "pml",
            "backbone": self.embedder.backbone.state_dict(),
            "head": self.embedder.head.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "iteration": self.iteration,
            "threshold": self.threshold,
            "backbone_source": self.backbone_source,
            "torch_rng": torch.get_rng_state(),
            "config": self.cfg.to_dict(),
            "pml": asdict(self.settings),
        }
        tmp = self.out / (CHECKPOINT + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.out / CHECKPOINT)
        logger.info("checkpoint at iteration %d", self.iteration)

    def export_weights(self, path: str | Path) -> Path:
        """fp16 embedder (backbone + head + settings + threshold), loadable by ``load_embedder``."""
        return save_embedder(path, self.embedder, self.threshold, self.backbone_source)

    def _log(self, record: dict) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / LOG, "a") as fh:
            fh.write(json.dumps(record) + "\n")

    # -------------------------------------------------------------- loop
    def _loader(self) -> torch.utils.data.DataLoader:
        cfg = self.cfg
        if cfg.crop_size % 16:
            raise MemvosError(f"crop_size must be a multiple of 16 for the pml stage, got {cfg.crop_size}")
        exclude = set(cfg.val_sequences)
        seqs = [s for root in cfg.davis_roots for s in index_davis(root, exclude)]
        sampler = ClipSampler(cfg, seqs, photos=[] if not cfg.static_photos else None)
        stream = SampleStream(sampler, cfg.seed, self.rank, cfg.batch_size, self.iteration)
        return torch.utils.data.DataLoader(
            stream,
            batch_size=None,
            num_workers=cfg.num_workers,
            collate_fn=collate,
            persistent_workers=False,
            prefetch_factor=2 if cfg.num_workers else None,
        )

    def step(self, it: int, batch: dict[str, Tensor]) -> dict[str, float]:
        """One optimisation step on ``batch`` (see :func:`pml_batch_loss`)."""
        cfg = self.cfg
        for g in self.optimizer.param_groups:
            g["lr"] = cfg.lr * _lr_factor(cfg, it)
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + it)
        self.embedder.head.train()
        with _autocast(self.precision, self.device):
            loss, stats = pml_batch_loss(self.embedder, batch, self.settings, gen)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.embedder.head.parameters(), 5.0)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if stats["d_pos"] or stats["d_neg"]:
            mid = 0.5 * (stats["d_pos"] + stats["d_neg"])
            self.threshold = mid if self.threshold is None else 0.98 * self.threshold + 0.02 * mid
        return stats

    def train(self, iterations: int | None = None, validate=None) -> None:
        """Train up to ``iterations`` (default cfg.iterations) total iterations (``validate`` is unused)."""
        cfg = self.cfg
        if validate is not None:
            logger.info("the pml stage has no validation; ignoring it")
        total = cfg.iterations if iterations is None else iterations
        if self.iteration >= total:
            return
        last_ckpt = time.monotonic()
        bar = tqdm(
            total=total,
            initial=self.iteration,
            desc="train pml",
            unit="it",
            disable=not self.progress,
            dynamic_ncols=True,
        )
        t_start = time.monotonic()
        for it, batch in self._loader():
            assert it == self.iteration, (it, self.iteration)
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            stats = self.step(it, batch)
            self.iteration = it + 1
            bar.update(1)
            bar.set_postfix(loss=f"{stats['loss']:.3f}", active=f"{stats['active']:.2f}")
            if self.iteration % cfg.log_every == 0 or self.iteration == total:
                self._log(
                    {
                        "iteration": self.iteration,
                        **stats,
                        "threshold": self.threshold,
                        "lr": self.optimizer.param_groups[0]["lr"],
                        "elapsed_s": round(time.monotonic() - t_start, 1),
                    }
                )
            done = self.iteration >= total
            if done or time.monotonic() - last_ckpt > cfg.checkpoint_minutes * 60:
                self.save_checkpoint()
                self.export_weights(self.out / EXPORT)
                last_ckpt = time.monotonic()
            if done:
                break
        bar.close()

    def close(self) -> None:
        """Nothing to release (single process)."""
