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

import logging
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from memvos.errors import MemvosError
from memvos.interactive.embedding import PixelEmbedder, PixelEmbeddingHead, save_embedder
from memvos.interactive.loss import closest_distances, pml_triplet_loss
from memvos.models.lite import LiteMemoryNetwork
from memvos.models.registry import load_model, shipped_weights_path
from memvos.models.weights import load_weights, read_state_dict
from memvos.precision import autocast
from memvos.training.config import TrainConfig
from memvos.training.schedule import lr_factor
from memvos.training.trainer import StageTrainer

logger = logging.getLogger(__name__)

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


class PMLTrainer(StageTrainer):
    """Trains the pixel-embedding head in ``out_dir`` on the shared loop of
    :class:`memvos.training.trainer.StageTrainer` (single process)."""

    stage = "pml"
    desc = "train pml"
    distributed = False

    def __init__(self, cfg: TrainConfig, out_dir: str | Path, device: str = "auto", progress: bool = True):
        super().__init__(cfg, out_dir, device, progress)
        if cfg.crop_size % 16:
            raise MemvosError(f"crop_size must be a multiple of 16 for the pml stage, got {cfg.crop_size}")
        self.settings = s = PMLSettings.from_dict(cfg.pml)
        backbone, self.backbone_source = build_backbone(cfg.init_weights or s.backbone_init)
        ch = backbone.stage_channels
        head = PixelEmbeddingHead(ch[8], ch[16], dim=s.dim, hidden=s.hidden, coord_weight=s.coord_weight)
        self.embedder = PixelEmbedder(backbone, head).to(self.device)
        self.embedder.backbone.eval()
        self.optimizer = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scaler = torch.amp.GradScaler(
            "cuda", enabled=self.precision == "fp16" and self.device.type == "cuda"
        )
        self.threshold: float | None = None
        self._resume()

    # -------------------------------------------------------------- StageTrainer
    def checkpoint_state(self) -> dict:
        return {
            "backbone": self.embedder.backbone.state_dict(),
            "head": self.embedder.head.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "threshold": self.threshold,
            "backbone_source": self.backbone_source,
            "pml": asdict(self.settings),
        }

    def restore(self, state: dict) -> None:
        self.embedder.backbone.load_state_dict(state["backbone"])
        self.embedder.head.load_state_dict(state["head"])
        self.optimizer.load_state_dict(state["optimizer"])
        if "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.threshold = state.get("threshold")
        self.backbone_source = state.get("backbone_source", self.backbone_source)

    def export_weights(self, path: str | Path) -> Path:
        """fp16 embedder (backbone + head + settings + threshold), loadable by ``load_embedder``."""
        return save_embedder(path, self.embedder, self.threshold, self.backbone_source)

    def sampler_photos(self) -> list[Tensor] | None:
        return None if self.cfg.static_photos else []

    def log_extra(self, it: int) -> dict:
        return {"threshold": self.threshold, "lr": self.optimizer.param_groups[0]["lr"]}

    def step(self, it: int, batch: dict[str, Tensor]) -> dict[str, float]:
        """One optimisation step on ``batch`` (see :func:`pml_batch_loss`)."""
        cfg = self.cfg
        for g in self.optimizer.param_groups:
            g["lr"] = cfg.lr * lr_factor(cfg, it)
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + it)
        self.embedder.head.train()
        with autocast(self.precision, self.device):
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
