"""STM with a ResNet-50 trunk (Oh et al., ICCV 2019), module names of the official code.

The released ``STM_weights.pth`` loads strictly into :class:`STM` (see :mod:`memvos.models.weights`).
Given the same weights and frames, the outputs equal the official code's in float32.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from memvos.models.backbones.resnet import ResNet50Trunk
from memvos.models.base import MemoryNetwork, QueryEncoding
from memvos.models.modules import Decoder, KeyValue

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
KEY_DIM = 128
VALUE_DIM = 512
DECODER_DIM = 256


class _Encoder(nn.Module):
    """ResNet-50 trunk up to res4 (/16, 1024 ch) with ImageNet normalisation inside.

    With ``with_masks`` (the memory encoder) the stem adds ``conv1_m`` (object mask) and ``conv1_o``
    (mask of all other objects) to ``conv1`` before ``bn1``.
    """

    def __init__(self, with_masks: bool):
        super().__init__()
        trunk = ResNet50Trunk()
        if with_masks:
            self.conv1_m = nn.Conv2d(1, 64, 7, stride=2, padding=3, bias=False)
            self.conv1_o = nn.Conv2d(1, 64, 7, stride=2, padding=3, bias=False)
        self.conv1 = trunk.conv1
        self.bn1 = trunk.bn1
        self.relu = trunk.relu
        self.maxpool = trunk.maxpool
        self.res2 = trunk.layer1
        self.res3 = trunk.layer2
        self.res4 = trunk.layer3
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(
        self, image: Tensor, mask: Tensor | None = None, others: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """image (B,3,H,W) in [0,1]; mask/others (B,H,W). Returns r4 (/16), r3 (/8), r2 (/4)."""
        x = self.conv1((image - self.mean) / self.std)
        if mask is not None:
            x = (
                x
                + self.conv1_m(mask.unsqueeze(1).to(x.dtype))
                + self.conv1_o(others.unsqueeze(1).to(x.dtype))
            )
        x = self.maxpool(self.relu(self.bn1(x)))
        r2 = self.res2(x)
        r3 = self.res3(r2)
        r4 = self.res4(r3)
        return r4, r3, r2


class STM(MemoryNetwork):
    """Space-Time Memory network, ResNet-50 (38,925,570 parameters)."""

    stride = 16
    shared_key = False
    similarity = "dot"
    default_mem_every = 5
    default_max_memory_frames = 50

    def __init__(self, object_batch: int = 4) -> None:
        super().__init__()
        self.Encoder_M = _Encoder(with_masks=True)
        self.Encoder_Q = _Encoder(with_masks=False)
        self.KV_M_r4 = KeyValue(1024, KEY_DIM, VALUE_DIM)
        self.KV_Q_r4 = KeyValue(1024, KEY_DIM, VALUE_DIM)
        self.Decoder = Decoder(indim=2 * VALUE_DIM, r3dim=512, r2dim=256, mdim=DECODER_DIM)
        #: Objects encoded / decoded per batch: bounds activation memory with many objects.
        self.object_batch = object_batch

    def fuse_for_inference_(self) -> STM:
        """Fold the residual stages' BatchNorms (``bn1`` of the stem stays: the mask convs add before it)."""
        self.eval()
        for enc in (self.Encoder_M, self.Encoder_Q):
            for stage in (enc.res2, enc.res3, enc.res4):
                for block in stage:
                    block.fuse_bn_()
        return self

    def encode_query(self, image: Tensor) -> QueryEncoding:
        r4, r3, r2 = self.Encoder_Q(image)
        key, value = self.KV_Q_r4(r4)
        return QueryEncoding(key=key, features={"value": value, "r3": r3, "r2": r2})

    def encode_memory(
        self, image: Tensor, query: QueryEncoding | None, masks: Tensor, others: Tensor
    ) -> tuple[Tensor, Tensor]:
        keys, values = [], []
        for start in range(0, masks.shape[0], self.object_batch):
            m = masks[start : start + self.object_batch]
            o = others[start : start + self.object_batch]
            r4, _, _ = self.Encoder_M(image.expand(m.shape[0], -1, -1, -1), m, o)
            k, v = self.KV_M_r4(r4)
            keys.append(k)
            values.append(v)
        return torch.cat(keys), torch.cat(values)

    def decode(self, query: QueryEncoding, readout: Tensor) -> Tensor:
        f = query.features
        probs = []
        for start in range(0, readout.shape[0], self.object_batch):
            r = readout[start : start + self.object_batch]
            n = r.shape[0]
            m4 = torch.cat([r, f["value"].expand(n, -1, -1, -1)], dim=1)
            logits = self.Decoder(m4, f["r3"].expand(n, -1, -1, -1), f["r2"].expand(n, -1, -1, -1))
            probs.append(torch.softmax(logits.float(), dim=1)[:, 1])
        return torch.cat(probs)
