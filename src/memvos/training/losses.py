"""The loss of memvos-lite's training clips: frame t reads frames 1..t-1 (the first with its given mask,
later ones with their predicted masks), soft aggregation, cross-entropy with hard-pixel bootstrapping."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from memvos.inference.aggregation import others_of, soft_aggregate
from memvos.memory.read import MemoryReader
from memvos.models.base import QueryEncoding
from memvos.models.lite import LiteMemoryNetwork


def select_frames(q: QueryEncoding, idx: Tensor) -> QueryEncoding:
    """The encodings of batch rows ``idx`` (B',) of ``q``: key (B', Ck, h, w) and every feature map."""
    return QueryEncoding(q.key[idx], {k: v[idx] for k, v in q.features.items()})


def clip_loss(
    model: LiteMemoryNetwork, batch: dict[str, Tensor], reader: MemoryReader, bootstrap_ratio: float = 1.0
) -> tuple[Tensor, dict[str, float]]:
    """Cross-entropy on the soft-aggregated predictions of frames 2..T of every clip.

    Frame 2 reads the memory of frame 1 (given mask); frame t reads frames 1..t-1, each later one with its
    *predicted* soft mask. batch: frames (B, T, 3, H, W), masks (B, T, O, H, W), valid (B, O).
    """
    frames, masks, valid = batch["frames"], batch["masks"], batch["valid"]
    b, t, o = masks.shape[:3]
    enc = model.encode_frames(frames.flatten(0, 1))
    frame_idx = [torch.arange(b, device=frames.device) * t + i for i in range(t)]
    queries = [select_frames(enc, idx) for idx in frame_idx]
    vmask = valid[:, :, None, None].to(masks.dtype)
    mem_keys = [queries[0].key]
    mem_values = [model.encode_values(queries[0], masks[:, 0], others_of(masks[:, 0], dim=1))]
    losses, ious = [], []
    for i in range(1, t):
        key = torch.stack(mem_keys, 2).flatten(2)  # (B, Ck, T*h*w)
        value = torch.stack(mem_values, 3)  # (B, O, Cv, T, h, w)
        qk = queries[i].key
        readout = reader(key, value.flatten(1, 2).flatten(2), qk.flatten(2), tuple(qk.shape[-2:]))
        readout = readout.view(b, o, -1, *qk.shape[-2:])
        logits = model.decode_logits(queries[i], readout).float()  # (B, O, H, W)
        prob = torch.sigmoid(logits) * vmask
        agg = soft_aggregate(prob, dim=1)  # (B, O+1, H, W)
        gt = masks[:, i]
        labels = torch.where(gt.sum(1) > 0, gt.argmax(1) + 1, torch.zeros_like(gt[:, 0], dtype=torch.long))
        pixel_loss = F.nll_loss(torch.log(agg.clamp_min(1e-8)), labels, reduction="none").flatten(1)
        if bootstrap_ratio < 1.0:
            k = max(1, int(pixel_loss.shape[1] * bootstrap_ratio))
            pixel_loss = pixel_loss.topk(k, dim=1).values
        losses.append(pixel_loss.mean())
        pred = agg.argmax(1)
        inter = ((pred == labels) & (labels > 0)).sum().item()
        union = ((pred > 0) | (labels > 0)).sum().item()
        ious.append(inter / max(union, 1))
        if i + 1 < t:
            soft = agg[:, 1:].detach()
            mem_keys.append(qk)
            mem_values.append(model.encode_values(queries[i], soft, others_of(soft, dim=1)))
    loss = sum(losses) / len(losses)
    return loss, {"loss": float(loss.detach()), "iou": float(np.mean(ious))}


class ClipLoss(nn.Module):
    """Wraps the model so that DDP sees the whole clip loss as one ``forward``."""

    def __init__(self, model: LiteMemoryNetwork, reader: MemoryReader):
        super().__init__()
        self.model = model
        self.reader = reader

    def forward(self, batch: dict[str, Tensor], bootstrap_ratio: float) -> tuple[Tensor, dict[str, float]]:
        return clip_loss(self.model, batch, self.reader, bootstrap_ratio)
