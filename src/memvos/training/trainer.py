"""Training loop for memvos-lite (the clip loss: :mod:`memvos.training.losses`; torchrun helpers:
:mod:`memvos.training.distributed`; schedule: :mod:`memvos.training.schedule`).

Runs on one CPU/GPU or under ``torchrun`` (DDP: gloo on CPU, NCCL on GPU). Checkpoints every few minutes
(``checkpoint.pth``, exact resume), logs JSON lines to ``log.jsonl``, shows a progress bar.
"""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm import tqdm

from memvos.errors import MemvosError
from memvos.memory.read import MemoryReader
from memvos.models.lite import LiteMemoryNetwork
from memvos.models.weights import (
    describe_content,
    fp16_state_dict,
    load_torch_file,
    load_weights,
    one_line,
    plain,
    read_state_dict,
    save_weights,
)
from memvos.precision import autocast, training_precision
from memvos.training.config import TrainConfig
from memvos.training.data import ClipSampler, SampleStream, collate, index_davis, max_gap
from memvos.training.distributed import dist_env, setup_distributed
from memvos.training.losses import ClipLoss
from memvos.training.schedule import freeze_batchnorm, lr_factor

logger = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pth"
LOG = "log.jsonl"


# ---------------------------------------------------------------------------- the shared loop
class StageTrainer:
    """What every training stage shares: device, precision, seeds, the clip stream, and the loop with its
    progress bar, JSONL log, checkpoint cadence (atomic ``checkpoint.pth``, exact resume) and fp16 export.

    A stage implements :meth:`step` (one optimisation step -> logged statistics), :meth:`checkpoint_state`
    / :meth:`restore` (what a checkpoint holds beyond the iteration and RNG) and :meth:`export_weights`;
    it may override :meth:`after_step` (e.g. validation) and :meth:`log_extra`.
    """

    #: Name stored in checkpoints, so that one stage never resumes another's run folder.
    stage = "memory"
    #: Progress-bar label.
    desc = "train"
    #: Whether the stage runs data-parallel under torchrun.
    distributed = True

    def __init__(self, cfg: TrainConfig, out_dir: str | Path, device: str = "auto", progress: bool = True):
        self.cfg = cfg
        self.out = Path(out_dir)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        _, world, local = dist_env()
        if world > 1 and not self.distributed:
            raise MemvosError(f"the {self.stage} stage trains in one process (no torchrun)")
        self.device = torch.device(f"cuda:{local}" if device == "cuda" and world > 1 else device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.rank, self.world = setup_distributed(self.device)
        self.progress = progress and self.rank == 0
        self.precision = training_precision(cfg.precision, self.device)
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        self.iteration = 0

    # -------------------------------------------------------------- what a stage provides
    def step(self, it: int, batch: dict[str, Tensor]) -> dict[str, float]:
        """One optimisation step at iteration ``it``; returns statistics to log."""
        raise NotImplementedError

    def checkpoint_state(self) -> dict:
        """Everything to save beyond iteration, RNG and config (model, optimiser, ...)."""
        raise NotImplementedError

    def restore(self, state: dict) -> None:
        """Load what :meth:`checkpoint_state` saved."""
        raise NotImplementedError

    def export_weights(self, path: str | Path) -> Path:
        raise NotImplementedError

    def log_extra(self, it: int) -> dict:
        """Extra fields of each log record."""
        return {}

    def after_step(self, validate, done: bool) -> None:
        """Called after every step (rank 0 and others); default: nothing."""

    def sampler_photos(self) -> list[Tensor] | None:
        """Photos for the static-image samples (None: the sampler's default)."""
        return None

    # -------------------------------------------------------------- state
    def _resume(self) -> None:
        """Continue from ``OUT/checkpoint.pth`` when there is one, read with ``weights_only=True``.

        Raises:
            MemvosError: one line naming the checkpoint and what is wrong with it (unreadable, truncated,
                holding Python objects, another stage's, or not fitting this run).
        """
        path = self.out / CHECKPOINT
        if not path.is_file():
            return
        state = load_torch_file(path, kind="memvos training checkpoint")
        expected = ["stage", *self.checkpoint_state(), "iteration", "torch_rng", "config"]
        if not isinstance(state, dict) or "iteration" not in state or "torch_rng" not in state:
            raise MemvosError(
                f"{path} is not a memvos training checkpoint: it looks like {describe_content(state)}; "
                f"expected keys: {', '.join(expected)} (use another --out folder)"
            )
        if state.get("stage", "memory") != self.stage:
            raise MemvosError(f"{path} is not a {self.stage}-stage checkpoint; use another --out folder")
        iteration = state["iteration"]
        try:
            if type(iteration) is not int or iteration < 0:
                raise ValueError(f"iteration {iteration!r} is not a count")
            self.restore(state)
            torch.set_rng_state(state["torch_rng"])
        except KeyError as exc:
            raise MemvosError(
                f"{path} is an incomplete {self.stage}-stage checkpoint (no {exc} entry; expected keys: "
                f"{', '.join(expected)}); use another --out folder"
            ) from None
        except (TypeError, ValueError, RuntimeError, AttributeError, IndexError) as exc:
            raise MemvosError(
                f"{path} does not fit this {self.stage}-stage run ({one_line(exc)}); use another --out folder"
            ) from None
        self.iteration = iteration
        logger.info("resumed %s at iteration %d", path, self.iteration)

    def save_checkpoint(self) -> None:
        """Write ``OUT/checkpoint.pth`` atomically (fsync, rename), holding only tensors and plain types so
        that :meth:`_resume` reads it with ``weights_only=True``.

        Raises:
            MemvosError: the run folder or the file cannot be written (e.g. a full disk); an older
                checkpoint is then left as it was.
        """
        if self.rank != 0:
            return
        state = {
            "stage": self.stage,
            **self.checkpoint_state(),
            "iteration": int(self.iteration),
            "torch_rng": torch.get_rng_state(),
            "config": plain(self.cfg.to_dict()),
        }
        path = self.out / CHECKPOINT
        try:
            save_weights(state, path)  # atomic; checks that the state holds only tensors and plain types
        except OSError as exc:
            raise MemvosError(f"cannot write checkpoint {path}: {exc.strerror or exc}") from None
        logger.info("checkpoint at iteration %d", self.iteration)

    def _log(self, record: dict) -> None:
        if self.rank != 0:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / LOG, "a") as fh:
            fh.write(json.dumps(record) + "\n")

    # -------------------------------------------------------------- loop
    def _loader(self) -> torch.utils.data.DataLoader:
        cfg = self.cfg
        exclude = set(cfg.val_sequences)
        seqs = [s for root in cfg.davis_roots for s in index_davis(root, exclude, cfg.train_frame_limits)]
        sampler = ClipSampler(cfg, seqs, photos=self.sampler_photos())
        stream = SampleStream(sampler, cfg.seed, self.rank, cfg.batch_size, self.iteration)
        return torch.utils.data.DataLoader(
            stream,
            batch_size=None,
            num_workers=cfg.num_workers,
            collate_fn=collate,
            persistent_workers=False,
            prefetch_factor=2 if cfg.num_workers else None,
        )

    def train(self, iterations: int | None = None, validate=None) -> None:
        """Train up to ``iterations`` (default cfg.iterations) total iterations.

        Args:
            validate: optional callable(model) -> dict of metrics, for stages that validate (see
                :meth:`after_step`).
        """
        cfg = self.cfg
        total = cfg.iterations if iterations is None else iterations
        if self.iteration >= total:
            return
        last_ckpt = time.monotonic()
        bar = tqdm(
            total=total,
            initial=self.iteration,
            desc=self.desc,
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
            bar.set_postfix({k: f"{v:.3f}" for k, v in list(stats.items())[:2]})
            if self.iteration % cfg.log_every == 0 or self.iteration == total:
                self._log(
                    {
                        "iteration": self.iteration,
                        **stats,
                        **self.log_extra(it),
                        "elapsed_s": round(time.monotonic() - t_start, 1),
                    }
                )
            done = self.iteration >= total
            self.after_step(validate, done)
            if done or time.monotonic() - last_ckpt > cfg.checkpoint_minutes * 60:
                self.save_checkpoint()
                if self.rank == 0:
                    self.export_weights(self.out / "last.pth")
                last_ckpt = time.monotonic()
            if done:
                break
        bar.close()

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


# ---------------------------------------------------------------------------- the memory stage
class Trainer(StageTrainer):
    """The memory network stage (static-image and video clips): model, optimiser, validation."""

    def __init__(self, cfg: TrainConfig, out_dir: str | Path, device: str = "auto", progress: bool = True):
        super().__init__(cfg, out_dir, device, progress)
        if cfg.model != "memvos-lite":
            raise ValueError(f"training supports model memvos-lite, not {cfg.model!r}")
        model = LiteMemoryNetwork(pretrained_backbone=cfg.pretrained_backbone)
        if cfg.init_weights:
            load_weights(model, read_state_dict(cfg.init_weights), source=cfg.init_weights)
        frozen = model.freeze_backbone(cfg.freeze_backbone_stride)
        logger.info("froze %d backbone parameters (up to stride %d)", frozen, cfg.freeze_backbone_stride)
        model.train()
        freeze_batchnorm(model)
        model = model.to(self.device)
        if self.precision != "fp32":
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.reader = MemoryReader(kind="stm", similarity=model.similarity)
        loss_module = ClipLoss(model, self.reader)
        self.loss_fn = (
            nn.parallel.DistributedDataParallel(
                loss_module, device_ids=[self.device] if self.device.type == "cuda" else None
            )
            if self.world > 1
            else loss_module
        )
        backbone = [p for p in model.backbone.parameters() if p.requires_grad]
        ids = {id(p) for p in backbone}
        heads = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
        self.optimizer = torch.optim.AdamW(
            [{"params": backbone, "lr": cfg.backbone_lr}, {"params": heads, "lr": cfg.lr}],
            weight_decay=cfg.weight_decay,
        )
        self.base_lrs = [cfg.backbone_lr, cfg.lr]
        self.scaler = torch.amp.GradScaler(
            "cuda", enabled=self.precision == "fp16" and self.device.type == "cuda"
        )
        self.best_val: float | None = None
        self._resume()

    def checkpoint_state(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "best_val": self.best_val,
        }

    def restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.best_val = state.get("best_val")

    def export_weights(self, path: str | Path) -> Path:
        """fp16 state dict for shipping (loadable with weights_only=True)."""
        return save_weights(fp16_state_dict(self.model.state_dict()), path)

    def step(self, it: int, batch: dict[str, Tensor]) -> dict[str, float]:
        cfg = self.cfg
        if self.precision != "fp32":
            batch["frames"] = batch["frames"].contiguous()
        for g, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            g["lr"] = base * lr_factor(cfg, it)
        ratio = cfg.bootstrap_ratio if it >= cfg.bootstrap_start else 1.0
        with autocast(self.precision, self.device):
            loss, stats = self.loss_fn(batch, ratio)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 5.0)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return stats

    def log_extra(self, it: int) -> dict:
        return {"lr": self.optimizer.param_groups[1]["lr"], "max_gap": max_gap(self.cfg, it)}

    def after_step(self, validate, done: bool) -> None:
        """Validation every ``cfg.val_every`` iterations and at the end (rank 0); best J&F -> best.pth."""
        if validate is None or self.rank != 0:
            return
        if not (self.iteration % self.cfg.val_every == 0 or done):
            return
        self.model.eval()
        metrics = validate(self.model)
        self.model.train()
        freeze_batchnorm(self.model)
        self._log({"iteration": self.iteration, "validation": metrics})
        jf = metrics.get("J&F-Mean")
        if jf is not None and (self.best_val is None or jf > self.best_val):
            self.best_val = jf
            self.export_weights(self.out / "best.pth")
