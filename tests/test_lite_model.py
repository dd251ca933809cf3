"""memvos-lite building blocks: per-object broadcasting of per-frame features and the session's fast copy."""

from __future__ import annotations

import pytest
import torch

from memvos.inference.session import InferenceSession
from memvos.models.lite import LiteMemoryNetwork, per_object

from .conftest import needs_bf16


@pytest.fixture(scope="module")
def lite() -> LiteMemoryNetwork:
    torch.manual_seed(0)
    model = LiteMemoryNetwork(pretrained_backbone=False).eval()
    with torch.no_grad():  # non-trivial BN statistics, as trained weights have
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model


def test_per_object_broadcasts_one_image_and_repeats_batches() -> None:
    one = torch.randn(1, 4, 3, 5)
    assert per_object(one, 3) is one  # broadcast later, no copy
    two = torch.randn(2, 4, 3, 5)
    rep = per_object(two, 3)
    assert rep.shape == (6, 4, 3, 5)
    assert torch.equal(rep[0], two[0]) and torch.equal(rep[2], two[0]) and torch.equal(rep[3], two[1])


def test_objects_of_one_frame_equal_one_object_at_a_time(lite: LiteMemoryNetwork) -> None:
    """Values and decoded logits of 3 objects together (broadcast per-frame features) equal each alone."""
    image = torch.rand(1, 3, 64, 96)
    masks = (torch.rand(1, 3, 64, 96) > 0.5).float()
    others = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        q = lite.encode_frames(image)
        values = lite.encode_values(q, masks, others)
        logits = lite.decode_logits(q, values)
        assert values.shape[:2] == (1, 3) and logits.shape == (1, 3, 64, 96)
        for o in range(3):
            v1 = lite.encode_values(q, masks[:, o : o + 1], others[:, o : o + 1])
            torch.testing.assert_close(values[:, o : o + 1], v1, atol=1e-5, rtol=1e-5)
            l1 = lite.decode_logits(q, values[:, o : o + 1])
            torch.testing.assert_close(logits[:, o : o + 1], l1, atol=1e-5, rtol=1e-5)


def test_a_batch_of_frames_equals_each_frame_alone(lite: LiteMemoryNetwork) -> None:
    """B = 2 frames x O = 2 objects (the training layout, repeated features) equals each frame alone."""
    images = torch.rand(2, 3, 64, 64)
    masks, others = torch.rand(2, 2, 64, 64), torch.rand(2, 2, 64, 64)
    with torch.no_grad():
        q = lite.encode_frames(images)
        logits = lite.decode_logits(q, lite.encode_values(q, masks, others))
        for b in range(2):
            qb = lite.encode_frames(images[b : b + 1])
            lb = lite.decode_logits(qb, lite.encode_values(qb, masks[b : b + 1], others[b : b + 1]))
            torch.testing.assert_close(logits[b : b + 1], lb, atol=1e-4, rtol=1e-4)


@needs_bf16
def test_fast_session_stores_bf16_weights_on_a_private_copy(lite: LiteMemoryNetwork) -> None:
    before = {k: v.clone() for k, v in lite.state_dict().items()}
    session = InferenceSession(lite, precision="bf16")
    assert session.model is not lite
    convs = [m for m in session.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(p.dtype == torch.bfloat16 for m in convs for p in m.parameters())
    assert all(b.dtype != torch.bfloat16 for b in session.model.buffers())  # buffers stay as they were
    assert session.reader.bf16_affinity  # validated for this model (see LiteMemoryNetwork.bf16_affinity)
    after = lite.state_dict()
    assert all(after[k].dtype == before[k].dtype and torch.equal(after[k], before[k]) for k in before)
    fp32 = InferenceSession(lite, precision="fp32")
    assert fp32.model is lite and all(p.dtype == torch.float32 for p in fp32.model.parameters())


@needs_bf16
def test_bf16_session_masks_match_fp32(lite: LiteMemoryNetwork) -> None:
    """bf16 weights + autocast + bf16 affinity give nearly the fp32 session's masks on a tiny clip."""
    torch.manual_seed(1)
    frames = [(torch.rand(3, 64, 96) * 255).to(torch.uint8).permute(1, 2, 0).numpy() for _ in range(4)]
    mask = torch.zeros(64, 96, dtype=torch.int32)
    mask[16:48, 24:60] = 1
    runs = {}
    for precision in ("fp32", "bf16"):
        s = InferenceSession(lite, precision=precision)
        runs[precision] = [s.step(f, mask.numpy() if i == 0 else None).probs for i, f in enumerate(frames)]
    for a, b in zip(runs["fp32"], runs["bf16"], strict=True):
        assert (a - b).abs().max() < 0.1


def test_default_processing_size_caps_large_videos_at_480p(lite: LiteMemoryNetwork) -> None:
    session = InferenceSession(lite)
    assert session.size == LiteMemoryNetwork.default_size == 480
    assert session._processing_hw(1080, 1920) == (480, 853)
    assert session._processing_hw(480, 854) == (480, 854)  # DAVIS 480p runs at its own size
    assert session._processing_hw(240, 427) == (240, 427)  # never upscaled
    assert InferenceSession(lite, size=0)._processing_hw(1080, 1920) == (1080, 1920)
    assert InferenceSession(lite, size=288)._processing_hw(480, 854) == (288, 512)
