"""The learning-rate schedule and frozen BatchNorms shared by the training stages; torchrun's environment."""

from __future__ import annotations

import pytest
from torch import nn

from memvos.training.config import TrainConfig
from memvos.training.distributed import dist_env
from memvos.training.schedule import freeze_batchnorm, lr_factor


def test_lr_factor_warms_up_then_decays_to_five_percent():
    cfg = TrainConfig(iterations=110, warmup_iters=10)
    assert lr_factor(cfg, 0) == pytest.approx(0.1)
    assert lr_factor(cfg, 9) == pytest.approx(1.0)
    assert lr_factor(cfg, 10) == pytest.approx(1.0)
    factors = [lr_factor(cfg, it) for it in range(10, 111)]
    assert all(a >= b for a, b in zip(factors, factors[1:], strict=False))
    assert lr_factor(cfg, 110) == pytest.approx(0.05)
    assert lr_factor(cfg, 500) == pytest.approx(0.05)


def test_freeze_batchnorm_fixes_statistics_and_affine_parameters():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    model.train()
    freeze_batchnorm(model)
    assert not model[1].training and model[0].training
    assert not any(p.requires_grad for p in model[1].parameters())
    assert all(p.requires_grad for p in model[0].parameters())


def test_dist_env_reads_torchrun_variables(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert dist_env() == (0, 1, 0)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert dist_env() == (3, 4, 1)
