"""STM-R50: checkpoint layout, strict loading, module maths, parity of the session with the reference loop.

The reference facts come from ``../shared/reference/stm-architecture.md`` and the key list
``../shared/reference/stm_state_dict_keys.txt`` (tests needing the list skip without it). The parity test
re-states the official ``Run_video`` loop (per-object memorise with 'others', memory = permanent + previous,
Mem_every 5, soft aggregation, padding split) with its own loop, memory and aggregation code, calling only the
model's sub-modules; the session must reproduce it in float32.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from memvos.errors import MemvosError, WeightsError
from memvos.inference.session import InferenceSession
from memvos.models.registry import load_model
from memvos.models.stm import STM
from memvos.models.weights import load_weights, read_state_dict
from memvos.precision import cpu_runs_bf16

from .conftest import SHARED, needs_bf16, render_tiny_clip

KEYS_FILE = SHARED / "reference" / "stm_state_dict_keys.txt"
STM_PARAMETERS = 38_925_570  # stm-architecture.md / the key list header
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ---------------------------------------------------------------------------------------------- fixtures
def randomise_stm(seed: int = 0) -> STM:
    """An STM with seeded random weights whose BatchNorm statistics are calibrated on random inputs.

    Default init with identity BN statistics gives near-constant outputs; calibrated statistics give
    features (and labels) that vary over the frame, which makes the parity test meaningful.
    """
    torch.manual_seed(seed)
    model = STM()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # cumulative average
            m.reset_running_stats()
    model.train()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        x = torch.rand(2, 3, 64, 64, generator=g)
        mask = (torch.rand(2, 64, 64, generator=g) > 0.5).float()
        model.Encoder_Q(x)
        model.Encoder_M(x, mask, 1 - mask)
    return model.eval()


@pytest.fixture(scope="module")
def stm() -> STM:
    return randomise_stm()


def reference_keys() -> list[tuple[str, tuple[int, ...], str]]:
    """(key, shape, dtype) of the official checkpoint, from the shared key list."""
    if not KEYS_FILE.is_file():
        pytest.skip(f"reference key list not found: {KEYS_FILE} (needs ../shared beside the checkout)")
    out = []
    for line in KEYS_FILE.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        m = re.fullmatch(r"(\S+) \(([\d, ]*)\) (\w+)", line.strip())
        assert m, f"unparsed line {line!r}"
        shape = tuple(int(v) for v in m.group(2).replace(" ", "").split(",") if v)
        out.append((m.group(1), shape, m.group(3)))
    return out


def random_reference_state(seed: int = 0) -> dict[str, Tensor]:
    """A state dict built from the key list alone (``module.`` prefix as in the released file)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape, dtype in reference_keys():
        if dtype == "int64":
            state[key] = torch.randint(0, 1000, shape, generator=g, dtype=torch.int64)
        else:
            t = torch.randn(shape, generator=g) * 0.05
            if key.endswith("running_var"):
                t = t.abs() + 0.5
            state[key] = t
    return state


# ---------------------------------------------------------------------------------------------- layout
def test_parameter_count() -> None:
    model = STM()
    assert sum(p.numel() for p in model.parameters()) == STM_PARAMETERS


def test_layout_equals_reference_key_list() -> None:
    ref = reference_keys()
    assert len(ref) == 558
    model_state = STM().state_dict()
    assert {k.removeprefix("module."): s for k, s, _ in ref} == {
        k: tuple(v.shape) for k, v in model_state.items()
    }
    dtypes = {k.removeprefix("module."): d for k, _, d in ref}
    for k, v in model_state.items():
        assert str(v.dtype).removeprefix("torch.") == dtypes[k], k
    # parameters = float entries that are not BN statistics / normalisation buffers
    n_params = sum(
        math.prod(s)
        for k, s, d in ref
        if d == "float32" and not re.search(r"running_(mean|var)$|\.(mean|std)$", k)
    )
    assert n_params == STM_PARAMETERS


def test_random_reference_file_loads_strictly(tmp_path: Path) -> None:
    state = random_reference_state()
    path = tmp_path / "STM_weights.pth"
    torch.save(state, path)
    loaded = read_state_dict(path)
    assert all(not k.startswith("module.") for k in loaded)
    model = STM()
    load_weights(model, loaded, source=str(path))
    got = model.state_dict()
    assert set(got) == {k.removeprefix("module.") for k in state}
    for k, v in state.items():
        assert torch.equal(got[k.removeprefix("module.")], v), k
    # the registry path gives the same weights, in eval mode
    via_registry = load_model("stm-r50", path)
    assert not via_registry.training
    for k, v in via_registry.state_dict().items():
        assert torch.equal(v, got[k]), k
    path.unlink()  # 156 MB


def test_missing_num_batches_tracked_and_wrapped_checkpoints_load(tmp_path: Path) -> None:
    state = {k: v for k, v in random_reference_state(1).items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": state, "epoch": 3}, path)
    model = STM()
    load_weights(model, read_state_dict(path), source=str(path))
    assert torch.equal(model.Decoder.pred2.weight, state["module.Decoder.pred2.weight"])


def test_wrong_layout_names_the_keys(tmp_path: Path) -> None:
    state = random_reference_state(2)
    state["module.Decoder.pred.weight"] = state.pop("module.Decoder.pred2.weight")
    del state["module.KV_Q_r4.Key.bias"]
    state["module.Encoder_Q.conv1.weight"] = torch.zeros(64, 4, 7, 7)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError) as info:
        load_model("stm-r50", path)
    msg = str(info.value)
    assert "\n" not in msg
    for name in ("Decoder.pred2.weight", "KV_Q_r4.Key.bias", "Decoder.pred.weight", "Encoder_Q.conv1.weight"):
        assert name in msg, f"{name} not named in: {msg}"
    assert str(path) in msg


def test_other_models_weights_do_not_fit_stm(tmp_path: Path) -> None:
    from memvos.models.lite import LiteMemoryNetwork

    path = tmp_path / "lite.pth"
    torch.save(LiteMemoryNetwork(pretrained_backbone=False).state_dict(), path)
    with pytest.raises(WeightsError, match="missing keys"):
        load_model("stm-r50", path)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all \x00\x01\x02" * 10])
def test_garbage_file_is_a_weights_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "garbage.pth"
    path.write_bytes(content)
    with pytest.raises(WeightsError, match="garbage.pth") as info:
        load_model("stm-r50", path)
    assert "\n" not in str(info.value) and "weights_only" not in str(info.value)


def test_non_state_dict_and_missing_files(tmp_path: Path) -> None:
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(WeightsError, match="state dict"):
        read_state_dict(path)
    with pytest.raises(WeightsError, match="not found"):
        read_state_dict(tmp_path / "nope.pth")
    with pytest.raises(MemvosError, match="unknown model"):
        load_model("stm-r99", path)


# ---------------------------------------------------------------------------------------------- module maths
def _conv(x: Tensor, c: nn.Conv2d, stride: int = 1, padding: int = 1) -> Tensor:
    return F.conv2d(x, c.weight, c.bias, stride=stride, padding=padding)


def ref_resblock(m: nn.Module, x: Tensor) -> Tensor:
    r = _conv(F.relu(_conv(F.relu(x), m.conv1)), m.conv2)
    return (x if m.downsample is None else _conv(x, m.downsample)) + r


def ref_refine(m: nn.Module, skip: Tensor, previous: Tensor) -> Tensor:
    s = ref_resblock(m.ResFS, _conv(skip, m.convFS))
    return ref_resblock(
        m.ResMM, s + F.interpolate(previous, scale_factor=2, mode="bilinear", align_corners=False)
    )


def ref_decoder(d: nn.Module, r4: Tensor, r3: Tensor, r2: Tensor) -> Tensor:
    m4 = ref_resblock(d.ResMM, _conv(r4, d.convFM))
    m2 = ref_refine(d.RF2, r2, ref_refine(d.RF3, r3, m4))
    p2 = _conv(F.relu(m2), d.pred2)
    return F.interpolate(p2, scale_factor=4, mode="bilinear", align_corners=False)


def _bn(x: Tensor, bn: nn.BatchNorm2d) -> Tensor:
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


def ref_bottleneck(b: nn.Module, x: Tensor) -> Tensor:
    """torchvision v1.5 bottleneck: 1x1, 3x3 with the stride, 1x1, projection shortcut."""
    stride = 2 if b.downsample is not None and b.downsample[0].stride == (2, 2) else 1
    out = F.relu(_bn(F.conv2d(x, b.conv1.weight), b.bn1))
    out = F.relu(_bn(F.conv2d(out, b.conv2.weight, stride=stride, padding=1), b.bn2))
    out = _bn(F.conv2d(out, b.conv3.weight), b.bn3)
    short = (
        x
        if b.downsample is None
        else _bn(F.conv2d(x, b.downsample[0].weight, stride=stride), b.downsample[1])
    )
    return F.relu(out + short)


def ref_encoder(enc: nn.Module, image: Tensor, mask: Tensor | None = None, others: Tensor | None = None):
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    x = F.conv2d((image - mean) / std, enc.conv1.weight, stride=2, padding=3)
    if mask is not None:
        x = x + F.conv2d(mask[:, None], enc.conv1_m.weight, stride=2, padding=3)
        x = x + F.conv2d(others[:, None], enc.conv1_o.weight, stride=2, padding=3)
    x = F.max_pool2d(F.relu(_bn(x, enc.bn1)), 3, stride=2, padding=1)
    feats = []
    for stage in (enc.res2, enc.res3, enc.res4):
        for block in stage:
            x = ref_bottleneck(block, x)
        feats.append(x)
    r2, r3, r4 = feats
    return r4, r3, r2


@torch.no_grad()
def test_encoders_match_functional_restatement(stm: STM) -> None:
    g = torch.Generator().manual_seed(3)
    image = torch.rand(2, 3, 32, 48, generator=g)
    mask = torch.rand(2, 32, 48, generator=g)
    others = torch.rand(2, 32, 48, generator=g)
    got = stm.Encoder_M(image, mask, others)
    want = ref_encoder(stm.Encoder_M, image, mask, others)
    for a, b, stride, ch in zip(got, want, (16, 8, 4), (1024, 512, 256), strict=True):
        assert a.shape == (2, ch, 32 // stride, 48 // stride)
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    for a, b in zip(stm.Encoder_Q(image), ref_encoder(stm.Encoder_Q, image), strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    # the masks matter (conv1_m / conv1_o are summed into the stem)
    assert not torch.allclose(
        stm.Encoder_M(image, mask, others)[0], stm.Encoder_M(image, mask, 1 - others)[0]
    )


@torch.no_grad()
def test_decoder_and_key_value_match_functional_restatement(stm: STM) -> None:
    g = torch.Generator().manual_seed(4)
    r4 = torch.randn(2, 1024, 2, 3, generator=g)
    r3 = torch.randn(2, 512, 4, 6, generator=g)
    r2 = torch.randn(2, 256, 8, 12, generator=g)
    got = stm.Decoder(r4, r3, r2)
    assert got.shape == (2, 2, 32, 48)
    torch.testing.assert_close(got, ref_decoder(stm.Decoder, r4, r3, r2), atol=1e-4, rtol=1e-4)
    x = torch.randn(1, 1024, 2, 3, generator=g)
    k, v = stm.KV_M_r4(x)
    torch.testing.assert_close(k, _conv(x, stm.KV_M_r4.Key), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(v, _conv(x, stm.KV_M_r4.Value), atol=1e-5, rtol=1e-5)
    assert k.shape == (1, 128, 2, 3) and v.shape == (1, 512, 2, 3)


# ---------------------------------------------------------------------------------------------- parity
def ref_pad(h: int, w: int, d: int = 16) -> tuple[int, int, int, int]:
    """Reference ``pad_divide_by``: (left, right, top, bottom), floor half before."""
    new_h = h + (d - h % d) % d
    new_w = w + (d - w % d) % d
    lh, lw = (new_h - h) // 2, (new_w - w) // 2
    return lw, new_w - w - lw, lh, new_h - h - lh


@torch.no_grad()
def reference_run_video(
    model: STM, frames: Tensor, first_mask: np.ndarray, k: int, mem_every: int = 5
) -> Tensor:
    """Re-statement of the official STM ``Run_video`` for objects 1..k.

    Args:
        frames: (T, 3, H, W) float in [0, 1]. first_mask: (H, W) ids 0..k.
    Returns:
        (T, k + 1, H, W) estimated probabilities (frame 0: the one-hot mask).
    """
    t_max, _, h, w = frames.shape
    left, right, top, bottom = pad = ref_pad(h, w)
    es = torch.zeros(t_max, k + 1, h, w)
    es[0] = torch.stack([torch.from_numpy(first_mask == o) for o in range(k + 1)]).float()

    def memorize(t: int) -> tuple[Tensor, Tensor]:
        frame = F.pad(frames[t : t + 1], pad)
        masks = F.pad(es[t : t + 1], pad)  # (1, k+1, Hp, Wp)
        b_f, b_m, b_o = [], [], []
        for o in range(1, k + 1):
            b_f.append(frame)
            b_m.append(masks[:, o])
            b_o.append(
                (torch.sum(masks[:, 1:o], dim=1) + torch.sum(masks[:, o + 1 : k + 1], dim=1)).clamp(0, 1)
            )
        r4, _, _ = model.Encoder_M(torch.cat(b_f), torch.cat(b_m), torch.cat(b_o))
        key, value = model.KV_M_r4(r4)  # (k, 128, h', w'), (k, 512, h', w')
        return key.unsqueeze(2), value.unsqueeze(2)  # T axis

    def segment(t: int, keys: Tensor, values: Tensor) -> Tensor:
        frame = F.pad(frames[t : t + 1], pad)
        r4, r3, r2 = model.Encoder_Q(frame)
        qk, qv = model.KV_Q_r4(r4)
        ck, cv = keys.shape[1], values.shape[1]
        hh, ww = qk.shape[-2:]
        mi = keys.reshape(k, ck, -1).transpose(1, 2)  # (k, T*h*w, 128)
        qi = qk.expand(k, -1, -1, -1).reshape(k, ck, hh * ww)
        p = F.softmax(torch.bmm(mi, qi) / math.sqrt(ck), dim=1)
        mem = torch.bmm(values.reshape(k, cv, -1), p).reshape(k, cv, hh, ww)
        m4 = torch.cat([mem, qv.expand(k, -1, -1, -1)], dim=1)
        logits = model.Decoder(m4, r3.expand(k, -1, -1, -1), r2.expand(k, -1, -1, -1))
        ps = F.softmax(logits, dim=1)[:, 1]  # (k, Hp, Wp)
        em = torch.cat([torch.prod(1 - ps, dim=0, keepdim=True), ps]).clamp(1e-7, 1 - 1e-7)
        logit = torch.log(em / (1 - em))
        return logit[:, top : logit.shape[1] - bottom, left : logit.shape[2] - right]

    to_memorize = list(range(0, t_max, mem_every))
    keys = values = None
    for t in range(1, t_max):
        prev_key, prev_value = memorize(t - 1)
        if t - 1 == 0:
            this_keys, this_values = prev_key, prev_value
        else:
            this_keys, this_values = (
                torch.cat([keys, prev_key], dim=2),
                torch.cat([values, prev_value], dim=2),
            )
        es[t] = F.softmax(segment(t, this_keys, this_values), dim=0)
        if t - 1 in to_memorize:
            keys, values = this_keys, this_values
    return es


@pytest.fixture(scope="module")
def parity_clip() -> tuple[np.ndarray, np.ndarray]:
    """13 frames of 45x69 with objects 1 and 2: padded to 48x80 with an odd split on both axes
    (top 1, bottom 2, left 5, right 6), so a wrong split of the padding is caught."""
    frames, labels = render_tiny_clip(num_frames=13, height=45, width=69, seed=5)
    assert set(np.unique(labels[0])) == {0, 1, 2}
    return frames, labels


@pytest.fixture(scope="module")
def reference_probs(stm: STM, parity_clip) -> Tensor:
    frames, labels = parity_clip
    # contiguous NCHW like the reference loader (a channels-last view picks other conv kernels)
    x = (torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255).contiguous()
    return reference_run_video(stm, x, labels[0], k=2)


def test_session_matches_reference_run_video(stm: STM, parity_clip, reference_probs: Tensor) -> None:
    frames, labels = parity_clip
    session = InferenceSession(stm, precision="fp32", max_memory_frames=None, device="cpu")
    assert session.policy.mem_every == 5
    total = agree = 0
    worst = 0.0
    for t, frame in enumerate(frames):
        r = session.step(frame, labels[0] if t == 0 else None)
        ref = reference_probs[t]
        assert r.object_ids == [1, 2]
        assert r.probs.shape == ref.shape
        worst = max(worst, float((r.probs - ref).abs().max()))
        ref_labels = ref.argmax(0).numpy()
        agree += int((r.labels == ref_labels).sum())
        total += ref_labels.size
    assert worst <= 1e-5, f"max probability difference {worst:.3g}"
    assert agree / total >= 0.9999, f"labels agree on {agree / total:.4%}"
    # the random model must not be degenerate: every label is used somewhere after frame 0
    later = reference_probs[1:].argmax(1)
    assert all((later == c).any() for c in range(3))


def test_reference_restatement_is_sensitive_to_the_schedule(stm: STM, parity_clip, reference_probs) -> None:
    """A session memorising every 4th frame differs from the reference: the parity test can fail."""
    frames, labels = parity_clip
    session = InferenceSession(stm, precision="fp32", max_memory_frames=None, mem_every=4)
    worst = 0.0
    for t, frame in enumerate(frames):
        r = session.step(frame, labels[0] if t == 0 else None)
        worst = max(worst, float((r.probs - reference_probs[t]).abs().max()))
    assert worst > 1e-3


def test_fuse_for_inference_keeps_outputs() -> None:
    """Folding the residual stages' BatchNorms (done by the session for bf16/fp16) changes no output."""
    model = randomise_stm(3).eval()
    fused = STM()
    fused.load_state_dict(model.state_dict())
    fused.fuse_for_inference_()
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    assert n_bn == 2  # only the two stems' bn1 (the mask convs add before it)
    image = torch.rand(1, 3, 64, 96)
    masks, others = torch.rand(2, 64, 96), torch.rand(2, 64, 96)
    with torch.no_grad():
        ref_q, out_q = model.encode_query(image), fused.encode_query(image)
        ref_m, out_m = (
            model.encode_memory(image, None, masks, others),
            fused.encode_memory(image, None, masks, others),
        )
    torch.testing.assert_close(out_q.key, ref_q.key, atol=1e-3, rtol=1e-3)
    for name in ref_q.features:
        torch.testing.assert_close(out_q.features[name], ref_q.features[name], atol=1e-3, rtol=1e-3)
    for ref, out in zip(ref_m, out_m, strict=True):
        torch.testing.assert_close(out, ref, atol=1e-3, rtol=1e-3)


def test_fast_session_leaves_the_callers_model_untouched() -> None:
    model = randomise_stm(4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    InferenceSession(model, precision="fp32-fast", device="cpu")
    if cpu_runs_bf16():
        InferenceSession(model, precision="bf16", device="cpu")
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)


@needs_bf16
def test_bf16_session_runs_stm_with_its_float32_stem_batchnorm(parity_clip) -> None:
    """The fast copy keeps norm layers in float32 (STM's unfused stem bn1 runs on bf16 activations):
    a bf16 session segments the parity clip into valid distributions, close to the fp32 session at first."""
    frames, labels = parity_clip
    model = randomise_stm(4)
    fast = InferenceSession(model, precision="bf16", max_memory_frames=None)
    exact = InferenceSession(model, precision="fp32", max_memory_frames=None)
    assert all(p.dtype == torch.float32 for p in fast.model.Encoder_Q.bn1.parameters())
    assert fast.model.Encoder_Q.conv1.weight.dtype == torch.bfloat16
    for t, frame in enumerate(frames[:3]):
        a = fast.step(frame, labels[0] if t == 0 else None)
        b = exact.step(frame, labels[0] if t == 0 else None)
        torch.testing.assert_close(a.probs.sum(0), torch.ones_like(a.probs[0]), atol=1e-3, rtol=0)
        if t == 1:  # the first propagated frame: bf16 rounding only (later frames amplify it)
            assert (a.probs - b.probs).abs().mean() < 0.05
