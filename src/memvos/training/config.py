"""Training configuration: a dataclass read from a JSON file, overridable with ``key=value`` pairs."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from memvos.errors import MemvosError


def parse_overrides(items: list[str]) -> dict:
    """``["key=value", ...]`` -> {key: value}, each value read as JSON where it parses, else a string.

    Raises:
        MemvosError: an item has no ``=``.
    """
    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise MemvosError(f"override {item!r} is not key=value")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


@dataclass
class TrainConfig:
    """All knobs of ``memvos train``. Paths are relative to the current directory."""

    stage: str = "memory"  # "memory": the memory network (trainer.py); "pml": pixel embeddings (pml.py)
    pml: dict = field(default_factory=dict)  # settings of the pml stage (memvos.training.pml.PMLSettings)
    model: str = "memvos-lite"
    init_weights: str | None = None  # start from these weights (e.g. the static-image stage's result)
    pretrained_backbone: bool = True  # ImageNet EfficientNet-Lite weights for the backbone
    freeze_backbone_stride: int = 8  # freeze backbone blocks up to this output stride (0: train all)
    # data
    davis_roots: list[str] = field(default_factory=lambda: ["../shared/data/davis16-train"])
    val_root: str | None = "../shared/data/davis16-train"
    val_sequences: list[str] = field(default_factory=list)  # held out from training, scored with J&F
    # sequence -> [start, stop) frames kept for training (e.g. later frames of a clip held out)
    train_frame_limits: dict[str, list[int]] = field(default_factory=dict)
    frames_per_sample: int = 3  # frames of a training clip: the first is given, the others read memory
    distractor_prob: float = 0.0  # chance of compositing a moving look-alike copy of one of the objects
    static_prob: float = 0.0  # fraction of samples that are static-image pseudo-videos
    static_photos: bool = True  # use scikit-image photos as backgrounds with pasted objects
    paste_prob: float = 0.5  # chance of pasting an object from another video (multi-object samples)
    max_objects: int = 3
    crop_size: int = 224
    scale_range: tuple[float, float] = (1.0, 1.4)  # shorter side = crop_size * U(range) before cropping
    max_gap_start: int = 5
    max_gap_end: int = 25
    gap_curriculum_iters: int = 2000
    # optimisation
    iterations: int = 10000
    batch_size: int = 8
    lr: float = 2e-4
    backbone_lr: float = 5e-5
    weight_decay: float = 1e-4
    warmup_iters: int = 100
    bootstrap_start: int = 1000  # after this iteration, the loss keeps only the hardest pixels ...
    bootstrap_ratio: float = 0.2  # ... this fraction of them
    # auto = fp16 AMP on CUDA; on CPU bf16 only where oneDNN has native bf16 (AMX / AVX512-BF16). Without it
    # (e.g. an AVX2-only AMD EPYC) bf16 autocast is emulated: forward+backward of one batch measured
    # 35-130 s vs 5 s in fp32.
    precision: str = "auto"  # auto | fp32 | bf16 (CPU autocast + channels_last) | fp16 (CUDA AMP)
    seed: int = 0
    num_workers: int = 1
    # bookkeeping
    checkpoint_minutes: float = 5.0
    log_every: int = 10
    val_every: int = 1000

    @classmethod
    def from_file(cls, path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
        data: dict = {}
        if path is not None:
            try:
                data = json.loads(Path(path).read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise MemvosError(f"cannot read config {path}: {exc}") from None
        known = {f.name: f for f in fields(cls)}
        data.update(parse_overrides(overrides or []))
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise MemvosError(f"unknown config keys: {', '.join(unknown)}")
        cfg = cls(**data)
        cfg.scale_range = tuple(cfg.scale_range)
        if cfg.frames_per_sample < 3:
            raise MemvosError(f"frames_per_sample must be at least 3, not {cfg.frames_per_sample}")
        return cfg

    def to_dict(self) -> dict:
        return asdict(self)
