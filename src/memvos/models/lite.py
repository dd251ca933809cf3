"""memvos-lite: the default model. A fast STCN-style memory network on an EfficientNet-Lite backbone.

* Query/key encoder: ImageNet EfficientNet-Lite0 up to stride 16, shared by query and memory: every frame is
  encoded once and its key is reused when the frame enters memory (one affinity for all objects).
* Key head: 3x3 conv -> Ck = 64, L2 similarity (STCN).
* Mask (value) encoder: a light strided CNN on (mask, others) fused at /4, /8, /16 with the frame's backbone
  features -> Cv = 128 per object.
* Decoder: STM-style with skips at /8 and /4, narrowing 128 -> 64 -> 32 channels, one foreground logit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from memvos.models.backbones.efficientnet_lite import efficientnet_lite
from memvos.models.base import MemoryNetwork, QueryEncoding
from memvos.models.modules import ResBlock, conv_act, enable_fused_activations_

KEY_DIM = 64
VALUE_DIM = 128
QUERY_VALUE_DIM = 64
DECODER_DIMS = (128, 64, 32)  # working widths at /16, /8, /4
MASK_DIMS = (16, 32, 64)  # mask encoder widths at /2, /4, /8


def _conv(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2)


def per_object(t: Tensor, objects_per_image: int) -> Tensor:
    """(B, C, h, w) per-image features -> one row per object, (B*O, C, h, w), or (1, C, h, w) when B == 1.

    With a single image the tensor is returned as it is and broadcasts against the (O, C, h, w) object
    tensors it is added to: no copy, and its memory format (channels_last at inference) is kept.
    """
    return t if t.shape[0] == 1 else t.repeat_interleave(objects_per_image, dim=0)


class MaskEncoder(nn.Module):
    """(B*O, 2, H, W) mask + others -> (B*O, Cv, H/16, W/16), fused with the frame's backbone features."""

    def __init__(self, f4: int, f8: int, f16: int):
        super().__init__()
        d2, d4, d8 = MASK_DIMS
        self.conv2 = _conv(2, d2, stride=2)
        self.conv4 = _conv(d2, d4, stride=2)
        self.conv8 = _conv(d4, d8, stride=2)
        self.conv16 = _conv(d8, VALUE_DIM, stride=2)
        self.img4 = nn.Conv2d(f4, d4, 1)
        self.img8 = nn.Conv2d(f8, d8, 1)
        self.img16 = nn.Conv2d(f16, VALUE_DIM, 1)
        self.fuse = ResBlock(VALUE_DIM)

    def image_features(self, feats: dict[int, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Object-independent projections of the backbone features, computed once per frame."""
        return self.img4(feats[4]), self.img8(feats[8]), self.img16(feats[16])

    def forward(self, masks: Tensor, image: tuple[Tensor, Tensor, Tensor], objects_per_image: int) -> Tensor:
        i4, i8, i16 = (per_object(t, objects_per_image) for t in image)
        x = conv_act(self.conv2, masks)
        x = F.relu(self.conv4(x) + i4)
        x = F.relu(self.conv8(x) + i8)
        x = self.conv16(x) + i16
        return self.fuse(x)


class LiteDecoder(nn.Module):
    """Read-out at /16 (+ query value) -> foreground logit at /4, upsampled x4."""

    def __init__(self, indim: int, f8: int, f4: int):
        super().__init__()
        d16, d8, d4 = DECODER_DIMS
        self.convFM = _conv(indim, d16)
        self.ResMM = ResBlock(d16)
        self.skip8 = _conv(f8, d8)
        self.up8 = nn.Conv2d(d16, d8, 1)
        self.Res8 = ResBlock(d8)
        self.skip4 = _conv(f4, d4)
        self.up4 = nn.Conv2d(d8, d4, 1)
        self.Res4 = ResBlock(d4)
        self.pred = _conv(d4, 1)

    def skips(self, feats: dict[int, Tensor]) -> tuple[Tensor, Tensor]:
        """Object-independent skip projections, computed once per frame."""
        return self.skip8(feats[8]), self.skip4(feats[4])

    def forward(self, x: Tensor, skips: tuple[Tensor, Tensor], objects_per_image: int) -> Tensor:
        """x (B*O, indim, h, w) -> logits (B*O, 1, 16h, 16w)."""
        s8, s4 = (per_object(t, objects_per_image) for t in skips)
        m16 = self.ResMM(self.convFM(x))
        m8 = self.Res8(
            s8 + F.interpolate(self.up8(m16), scale_factor=2, mode="bilinear", align_corners=False)
        )
        m4 = self.Res4(s4 + F.interpolate(self.up4(m8), scale_factor=2, mode="bilinear", align_corners=False))
        logit = self.pred(F.relu(m4))
        return F.interpolate(logit, scale_factor=4, mode="bilinear", align_corners=False)


class LiteMemoryNetwork(MemoryNetwork):
    """The default memvos model (see module docstring)."""

    stride = 16
    shared_key = True
    similarity = "l2"
    default_mem_every = 5
    #: 4 since 0.3.1: 1.3x the fps of 8 for 0.3 J&F on the held-out clips (BENCHMARKS.md "Memory size").
    default_max_memory_frames = 4
    #: Checked on the shipped weights: 99.99 % of the pixels of 770 segmented held-out DAVIS frames (six
    #: sequences at 240p; car-turn and paragliding at 480p and at --size 288) keep their label against the
    #: float32-affinity read (BENCHMARKS.md).
    bf16_affinity = True
    #: Frames with a shorter side above 480 px (720p, 1080p, 4K) are processed at 480p, the DAVIS scale
    #: the model was validated at; 480p and smaller videos run at their own size.
    default_size = 480

    def __init__(self, variant: str = "lite0", pretrained_backbone: bool = True):
        super().__init__()
        self.backbone = efficientnet_lite(
            variant, pretrained=pretrained_backbone, num_classes=None, max_stride=16
        )
        ch = self.backbone.stage_channels
        f4, f8, f16 = ch[4], ch[8], ch[16]
        self.key_proj = _conv(f16, KEY_DIM)
        self.query_value = _conv(f16, QUERY_VALUE_DIM)
        self.mask_encoder = MaskEncoder(f4, f8, f16)
        self.decoder = LiteDecoder(VALUE_DIM + QUERY_VALUE_DIM, f8, f4)

    def freeze_backbone(self, until_stride: int) -> int:
        """Freeze the stem and every backbone block up to output stride ``until_stride`` (0: none).

        Returns the number of parameters frozen.
        """
        if until_stride <= 0:
            return 0
        bb = self.backbone
        last = max(i for i, st in bb._feature_at.items() if st <= until_stride)
        modules = [bb._conv_stem, bb._bn0, *bb._blocks[: last + 1]]
        n = 0
        for m in modules:
            for p in m.parameters():
                p.requires_grad_(False)
                n += p.numel()
        return n

    def fuse_for_inference_(self) -> LiteMemoryNetwork:
        self.eval()
        self.backbone.fuse_bn_()
        enable_fused_activations_(self)
        return self

    # -- batched building blocks (used by training and by the session API below)
    def encode_frames(self, images: Tensor) -> QueryEncoding:
        """images (B, 3, H, W) in [0, 1] -> key (B, Ck, h, w) and per-frame features."""
        feats = self.backbone.forward_features(images)
        f16 = feats[16]
        s8, s4 = self.decoder.skips(feats)
        i4, i8, i16 = self.mask_encoder.image_features(feats)
        return QueryEncoding(
            key=self.key_proj(f16),
            features={"qv": self.query_value(f16), "s8": s8, "s4": s4, "i4": i4, "i8": i8, "i16": i16},
        )

    def encode_values(self, query: QueryEncoding, masks: Tensor, others: Tensor) -> Tensor:
        """masks/others (B, O, H, W) -> values (B, O, Cv, h, w)."""
        b, o = masks.shape[:2]
        f = query.features
        x = torch.stack([masks, others], dim=2).flatten(0, 1).to(f["i4"].dtype)
        v = self.mask_encoder(x, (f["i4"], f["i8"], f["i16"]), o)
        return v.view(b, o, *v.shape[1:])

    def decode_logits(self, query: QueryEncoding, readout: Tensor) -> Tensor:
        """readout (B, O, Cv, h, w) -> foreground logits (B, O, H, W)."""
        b, o = readout.shape[:2]
        qv = per_object(query.features["qv"], o)
        r = readout.flatten(0, 1).to(qv.dtype)
        x = torch.cat([r, qv.expand(r.shape[0], -1, -1, -1)], dim=1)
        logits = self.decoder(x, (query.features["s8"], query.features["s4"]), o)
        return logits.view(b, o, *logits.shape[-2:])

    # -- MemoryNetwork interface (one frame)
    def encode_query(self, image: Tensor) -> QueryEncoding:
        return self.encode_frames(image)

    def encode_memory(
        self, image: Tensor, query: QueryEncoding | None, masks: Tensor, others: Tensor
    ) -> tuple[Tensor, Tensor]:
        if query is None:
            query = self.encode_frames(image)
        values = self.encode_values(query, masks[None], others[None])[0]
        return query.key, values

    def decode(self, query: QueryEncoding, readout: Tensor) -> Tensor:
        return torch.sigmoid(self.decode_logits(query, readout[None])[0].float())
