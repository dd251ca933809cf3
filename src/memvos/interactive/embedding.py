"""Pixel embeddings for interactive segmentation (PML): a small head on the memvos-lite backbone.

The head maps the backbone's /8 and (upsampled) /16 features to ``dim`` learnt channels at stride 8 and
appends the pixel's normalised (x, y) coordinates times ``coord_weight``, as PML does, so that retrieval
prefers nearby reference pixels. Distances are Euclidean. The backbone is frozen: the head is trained with
:func:`memvos.interactive.loss.pml_triplet_loss` by :mod:`memvos.training.pml`.

Weights files (``pml-lite.pth``) hold the backbone and the head (fp16, ~1.5 MB) plus the head's settings,
so a head always runs on the backbone it was trained on.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from memvos.errors import WeightsError
from memvos.models.backbones.efficientnet_lite import efficientnet_lite
from memvos.models.registry import WEIGHTS_DIR
from memvos.models.weights import (
    describe_content,
    fp16_state_dict,
    load_torch_file,
    load_weights,
    save_weights,
)

logger = logging.getLogger(__name__)

STRIDE = 8
COORD_CHANNELS = 2
FORMAT = "memvos-pml-1"
SHIPPED_WEIGHTS = WEIGHTS_DIR / "pml-lite.pth"
_EXPECTED_KEYS = ("format", "dim", "hidden", "coord_weight", "backbone", "head")


def coordinate_channels(h: int, w: int, weight: float, device: torch.device | None = None) -> Tensor:
    """(2, h, w): cell centres' x and y divided by max(h, w) (isotropic, in [0, 1]) times ``weight``."""
    scale = float(max(h, w))
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / scale
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / scale
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx, yy]) * weight


class PixelEmbeddingHead(nn.Module):
    """{8: (B, C8, h, w), 16: (B, C16, h/2, w/2)} backbone features -> (B, dim + 2, h, w) embeddings."""

    def __init__(self, f8: int, f16: int, dim: int = 32, hidden: int = 64, coord_weight: float = 1.0):
        super().__init__()
        self.dim, self.hidden, self.coord_weight = dim, hidden, float(coord_weight)
        self.proj8 = nn.Conv2d(f8, hidden, 1)
        self.proj16 = nn.Conv2d(f16, hidden, 1)
        self.fuse = nn.Sequential(
            nn.Conv2d(2 * hidden, hidden, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, dim, 1),
        )

    @property
    def out_dim(self) -> int:
        return self.dim + COORD_CHANNELS

    def forward(self, feats: dict[int, Tensor]) -> Tensor:
        x8 = self.proj8(feats[8])
        x16 = F.interpolate(self.proj16(feats[16]), size=x8.shape[-2:], mode="bilinear", align_corners=False)
        emb = self.fuse(torch.cat([F.relu(x8), F.relu(x16)], dim=1)).float()
        b, _, h, w = emb.shape
        coords = coordinate_channels(h, w, self.coord_weight, emb.device).expand(b, -1, -1, -1)
        return torch.cat([emb, coords], dim=1)


class RawFeatureHead(nn.Module):
    """Fallback without trained weights: the L2-normalised /8 and (upsampled) /16 backbone features,
    concatenated, + coordinates; (B, C8 + C16 + 2, h, w). No parameters."""

    hidden = 0

    def __init__(self, f8: int, f16: int, coord_weight: float = 1.0):
        super().__init__()
        self.dim, self.coord_weight = f8 + f16, float(coord_weight)

    @property
    def out_dim(self) -> int:
        return self.dim + COORD_CHANNELS

    def forward(self, feats: dict[int, Tensor]) -> Tensor:
        f8 = F.normalize(feats[8].float(), dim=1)
        f16 = F.interpolate(feats[16].float(), size=f8.shape[-2:], mode="bilinear", align_corners=False)
        emb = torch.cat([f8, F.normalize(f16, dim=1)], dim=1) * 0.5**0.5
        b, _, h, w = emb.shape
        coords = coordinate_channels(h, w, self.coord_weight, emb.device).expand(b, -1, -1, -1)
        return torch.cat([emb, coords], dim=1)


class PixelEmbedder(nn.Module):
    """Backbone (frozen) + :class:`PixelEmbeddingHead`: images -> embeddings at stride 8.

    ``threshold``: a distance (learnt in training) beyond which a pixel is not retrieved as an object
    when no negative reference is closer; None when the head is untrained.
    """

    stride = STRIDE

    def __init__(
        self, backbone: nn.Module, head: PixelEmbeddingHead | RawFeatureHead, threshold: float | None = None
    ):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.threshold = threshold
        self.backbone_source = "unknown"

    @classmethod
    def from_model(
        cls, model: nn.Module, dim: int = 32, hidden: int = 64, coord_weight: float = 1.0, seed: int = 0
    ) -> PixelEmbedder:
        """A new (untrained, seeded) head on ``model.backbone`` (shared, not copied)."""
        ch = model.backbone.stage_channels
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            head = PixelEmbeddingHead(ch[8], ch[16], dim=dim, hidden=hidden, coord_weight=coord_weight)
        return cls(model.backbone, head)

    @classmethod
    def raw_features(cls, model: nn.Module, coord_weight: float = 1.0) -> PixelEmbedder:
        """The fallback without trained weights (:class:`RawFeatureHead`) on ``model.backbone``."""
        ch = model.backbone.stage_channels
        return cls(model.backbone, RawFeatureHead(ch[8], ch[16], coord_weight))

    @property
    def out_dim(self) -> int:
        return self.head.out_dim

    def features(self, images: Tensor) -> dict[int, Tensor]:
        """images (B, 3, H, W) in [0, 1], H and W multiples of 16 -> frozen backbone features (no grad)."""
        with torch.no_grad():
            return self.backbone.forward_features(images)

    def forward(self, images: Tensor) -> Tensor:
        """images (B, 3, H, W) in [0, 1] (any size) -> (B, D, ceil(H/8), ceil(W/8)); cell (i, j) covers
        pixels [8i, 8i+8) x [8j, 8j+8). Padding (bottom/right) is cropped from the output."""
        h, w = images.shape[-2:]
        ph, pw = (-h) % 16, (-w) % 16
        if ph or pw:
            images = F.pad(images, (0, pw, 0, ph), mode="replicate")
        emb = self.head(self.features(images))
        h8, w8 = -(-h // STRIDE), -(-w // STRIDE)
        if emb.shape[-2:] != (h8, w8):
            emb = emb[..., :h8, :w8]
            # coordinates describe the cropped grid, not the padded one
            emb = torch.cat(
                [
                    emb[:, : self.head.dim],
                    coordinate_channels(h8, w8, self.head.coord_weight, emb.device)[None],
                ],
                dim=1,
            )
        return emb

    @torch.inference_mode()
    def embed_frame(self, rgb: np.ndarray) -> Tensor:
        """(H, W, 3) uint8 RGB -> (D, ceil(H/8), ceil(W/8)) float32 embeddings (inference mode)."""
        param = next(self.backbone.parameters())
        img = (
            torch.from_numpy(np.array(rgb, dtype=np.uint8, copy=True))
            .to(param.device)
            .permute(2, 0, 1)
            .float()
            / 255.0
        )
        return self(img[None])[0].float()

    def share_backbone(self, model: nn.Module) -> bool:
        """Use ``model.backbone`` instead of our own copy when their weights are equal; returns True if so."""
        other = getattr(model, "backbone", None)
        if other is None or other is self.backbone:
            return other is not None
        mine, theirs = self.backbone.state_dict(), other.state_dict()
        if mine.keys() != theirs.keys():
            return False
        for k, v in mine.items():
            t = theirs[k]
            if v.shape != t.shape or not torch.equal(v.to(t.device, t.dtype), t):
                return False
        self.backbone = other
        return True


# ---------------------------------------------------------------------------- weights files
def embedder_state(embedder: PixelEmbedder, threshold: float | None, backbone_source: str) -> dict:
    """The content of a weights file: fp16 tensors plus the head's settings (loads with weights_only)."""

    head = embedder.head
    if not isinstance(head, PixelEmbeddingHead):
        raise ValueError("only a trained PixelEmbeddingHead is saved")
    return {
        "format": FORMAT,
        "dim": head.dim,
        "hidden": head.hidden,
        "coord_weight": head.coord_weight,
        "threshold": None if threshold is None else float(threshold),
        "backbone_source": backbone_source,
        "backbone": fp16_state_dict(embedder.backbone.state_dict()),
        "head": fp16_state_dict(head.state_dict()),
    }


def save_embedder(path: str | Path, embedder: PixelEmbedder, threshold: float | None, source: str) -> Path:
    """Write a weights file atomically (see module docstring)."""
    return save_weights(embedder_state(embedder, threshold, source), path)


def load_embedder(path: str | Path, device: str | torch.device = "cpu") -> PixelEmbedder:
    """Read a weights file written by :func:`save_embedder` (``weights_only=True``: tensors and plain types).

    Raises:
        WeightsError: missing or unreadable file, Python objects in it, or not a memvos PML weights file (the
            message says what the file looks like and which keys were expected).
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"pixel-embedding weights not found: {path}")
    state = load_torch_file(path, kind="memvos pixel-embedding weights file")
    if not isinstance(state, dict) or state.get("format") != FORMAT or not set(_EXPECTED_KEYS) <= set(state):
        raise WeightsError(
            f"{path} is not a memvos pixel-embedding weights file (format {FORMAT}): it looks like "
            f"{describe_content(state)}; expected keys: {', '.join(_EXPECTED_KEYS)}"
        )
    parts = {name: state[name] for name in ("backbone", "head")}
    for name, part in parts.items():
        if not isinstance(part, dict) or not all(isinstance(v, Tensor) for v in part.values()):
            raise WeightsError(f"{path}: its {name!r} entry is not a state dict of tensors")
    try:
        dim, hidden, coord_weight = int(state["dim"]), int(state["hidden"]), float(state["coord_weight"])
        threshold = None if state.get("threshold") is None else float(state["threshold"])
    except (TypeError, ValueError) as exc:
        raise WeightsError(f"{path}: bad pixel-embedding settings ({exc})") from None
    backbone = efficientnet_lite("lite0", pretrained=False, num_classes=None, max_stride=16)
    ch = backbone.stage_channels
    head = PixelEmbeddingHead(ch[8], ch[16], dim=dim, hidden=hidden, coord_weight=coord_weight)
    for name, module in (("backbone", backbone), ("head", head)):
        load_weights(module, {k: v.float() for k, v in parts[name].items()}, source=f"{path} ({name})")
    embedder = PixelEmbedder(backbone, head, threshold=threshold)
    embedder.backbone_source = str(state.get("backbone_source", "unknown"))
    return embedder.to(device).eval()


def default_embedder(model: nn.Module, weights: str | Path | None = None) -> PixelEmbedder:
    """The trained embedder (``weights``, default the shipped ``pml-lite.pth``), sharing ``model``'s backbone
    when the weights are equal; without a weights file, the raw backbone features of ``model`` (with a
    warning: :class:`RawFeatureHead`, much less precise)."""
    path = Path(weights) if weights is not None else SHIPPED_WEIGHTS
    if weights is None and not path.is_file():
        logger.warning(
            "no trained pixel-embedding weights (%s): retrieving with raw backbone features; clicks will be "
            "much less precise (train them: memvos train --config configs/pml-lite.json)",
            path,
        )
        return PixelEmbedder.raw_features(model).eval()
    device = next(model.parameters()).device
    embedder = load_embedder(path, device=device)
    if embedder.share_backbone(model):
        logger.debug("pixel embedder shares the model's backbone")
    return embedder.eval()
