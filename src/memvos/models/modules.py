"""Building blocks of the STM decoder and key/value heads, with the official module names."""

from __future__ import annotations

import functools
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@torch.no_grad()
def fuse_conv_bn_(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold an eval-mode BatchNorm into the preceding ``conv`` in place (the conv gains a bias)."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
    bias = bn.bias - bn.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    conv.bias = nn.Parameter(bias.to(conv.weight.dtype))


@functools.cache
def pointwise_conv_available() -> bool:
    """True if this torch has oneDNN's fused conv + activation op (``mkldnn._convolution_pointwise``)."""
    try:
        x, w = torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 1, 1)
        torch.ops.mkldnn._convolution_pointwise(x, w, None, [0, 0], [1, 1], [1, 1], 1, "relu", [], "")
    except (AttributeError, RuntimeError):
        return False
    return True


def enable_fused_activations_(model: nn.Module) -> int:
    """Let the convs of an inference-only ``model`` run with their activation fused (see :func:`conv_act`).

    In place; call after BatchNorms are folded (the fused op has no BN). Returns the number of convs marked.
    """
    n = 0
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.padding_mode == "zeros" and not isinstance(m.padding, str):
            m.fuse_activation = True
            n += 1
    return n


def conv_act(conv: nn.Conv2d, x: Tensor, act: Literal["relu", "relu6"] = "relu") -> Tensor:
    """``act(conv(x))``; one oneDNN kernel instead of two passes when ``conv`` was marked by
    :func:`enable_fused_activations_` and runs on CPU without autograd (1.05-2.3x faster per layer on the
    EfficientNet-Lite expand/depthwise convs in bf16; bit-identical outputs)."""
    if (
        getattr(conv, "fuse_activation", False)
        and not torch.compiler.is_compiling()  # under torch.compile inductor fuses conv + activation itself
        and x.device.type == "cpu"
        and not torch.is_grad_enabled()
        and pointwise_conv_available()
    ):
        pad_input = getattr(conv, "pad_input", None)  # Conv2dSame: TF "SAME" padding
        x, padding = pad_input(x) if pad_input is not None else (x, conv.padding)
        w = conv.weight
        return torch.ops.mkldnn._convolution_pointwise(
            x.to(w.dtype),
            w,
            conv.bias,
            list(padding),
            list(conv.stride),
            list(conv.dilation),
            conv.groups,
            "relu" if act == "relu" else "hardtanh",
            [] if act == "relu" else [0.0, 6.0],
            "",
        )
    y = conv(x)
    return F.relu(y) if act == "relu" else F.hardtanh(y, 0.0, 6.0)


def conv_bn_act(conv: nn.Conv2d, bn: nn.Module, x: Tensor, act: Literal["relu", "relu6"] = "relu") -> Tensor:
    """``act(bn(conv(x)))``; once the BN is folded into the conv (``nn.Identity``), :func:`conv_act`."""
    if isinstance(bn, nn.Identity):
        return conv_act(conv, x, act)
    y = bn(conv(x))  # a fresh tensor: the activation runs in place, as nn.ReLU(inplace=True) did
    return F.relu(y, inplace=True) if act == "relu" else F.hardtanh(y, 0.0, 6.0, inplace=True)


class ResBlock(nn.Module):
    """Pre-activation residual block: x + conv2(relu(conv1(relu(x)))); 3x3 convs with bias."""

    def __init__(self, indim: int, outdim: int | None = None, stride: int = 1):
        super().__init__()
        outdim = indim if outdim is None else outdim
        self.downsample = (
            None
            if indim == outdim and stride == 1
            else nn.Conv2d(indim, outdim, kernel_size=3, padding=1, stride=stride)
        )
        self.conv1 = nn.Conv2d(indim, outdim, kernel_size=3, padding=1, stride=stride)
        self.conv2 = nn.Conv2d(outdim, outdim, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        r = self.conv2(conv_act(self.conv1, F.relu(x)))
        if self.downsample is not None:
            x = self.downsample(x)
        return x + r


class Refine(nn.Module):
    """Decoder refinement: s = ResFS(convFS(skip)); out = ResMM(s + bilinear_upsample(previous))."""

    def __init__(self, inplanes: int, planes: int, scale_factor: int = 2):
        super().__init__()
        self.convFS = nn.Conv2d(inplanes, planes, kernel_size=3, padding=1)
        self.ResFS = ResBlock(planes, planes)
        self.ResMM = ResBlock(planes, planes)
        self.scale_factor = scale_factor

    def forward(self, skip: Tensor, previous: Tensor) -> Tensor:
        s = self.ResFS(self.convFS(skip))
        m = s + F.interpolate(previous, scale_factor=self.scale_factor, mode="bilinear", align_corners=False)
        return self.ResMM(m)


class KeyValue(nn.Module):
    """Key and value heads: two 3x3 convs with bias on the same feature map."""

    def __init__(self, indim: int, keydim: int, valdim: int):
        super().__init__()
        self.Key = nn.Conv2d(indim, keydim, kernel_size=3, padding=1)
        self.Value = nn.Conv2d(indim, valdim, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.Key(x), self.Value(x)


class Decoder(nn.Module):
    """STM decoder: /16 -> /8 (skip r3) -> /4 (skip r2) -> 2-channel logits, bilinear x4 to input size.

    Args:
        indim: channels of the memory read-out at /16 (read value + query value).
        r3dim, r2dim: channels of the /8 and /4 skip features.
        mdim: working width.
    """

    def __init__(self, indim: int = 1024, r3dim: int = 512, r2dim: int = 256, mdim: int = 256):
        super().__init__()
        self.convFM = nn.Conv2d(indim, mdim, kernel_size=3, padding=1)
        self.ResMM = ResBlock(mdim, mdim)
        self.RF3 = Refine(r3dim, mdim)
        self.RF2 = Refine(r2dim, mdim)
        self.pred2 = nn.Conv2d(mdim, 2, kernel_size=3, padding=1)

    def forward(self, r4: Tensor, r3: Tensor, r2: Tensor) -> Tensor:
        """r4 (N, indim, h, w), r3 (N, r3dim, 2h, 2w), r2 (N, r2dim, 4h, 4w) -> logits (N, 2, 16h, 16w)."""
        m4 = self.ResMM(self.convFM(r4))
        m3 = self.RF3(r3, m4)
        m2 = self.RF2(r2, m3)
        p2 = self.pred2(F.relu(m2))
        return F.interpolate(p2, scale_factor=4, mode="bilinear", align_corners=False)
