"""What the training stages share about the optimisation: the learning-rate schedule, frozen BatchNorms."""

from __future__ import annotations

import math

from torch import nn

from memvos.training.config import TrainConfig


def freeze_batchnorm(model: nn.Module) -> None:
    """Small batches: keep BatchNorm statistics fixed (as STM/STCN training does)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)


def lr_factor(cfg: TrainConfig, it: int) -> float:
    """Linear warm-up, then cosine decay to 5% at the last iteration."""
    if it < cfg.warmup_iters:
        return (it + 1) / cfg.warmup_iters
    t = (it - cfg.warmup_iters) / max(1, cfg.iterations - cfg.warmup_iters)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
