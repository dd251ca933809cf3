"""InferenceSession, memory policy/bank, soft aggregation and padding.

Session tests drive a tiny stub :class:`MemoryNetwork` (1x1/3x3 convs on 16x average-pooled inputs) so that
they run in milliseconds; the exact STM path is checked against a re-statement of the reference loop in
``test_stm_model.py``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from memvos.errors import InputError
from memvos.inference import session as session_module
from memvos.inference.aggregation import labels_from_chunks, labels_from_probs, others_of, soft_aggregate
from memvos.inference.padding import compute_pad, pad_to_multiple, unpad
from memvos.inference.session import InferenceSession
from memvos.memory.bank import MemoryBank, MemoryEntry
from memvos.memory.policy import EntryKind, MemoryPolicy
from memvos.memory.read import MemoryReader
from memvos.models.base import MemoryNetwork, QueryEncoding

from .conftest import render_tiny_clip

H, W = 64, 96  # stub frames (W a multiple of 16, H too; padding is exercised with 50x70 below)


# ---------------------------------------------------------------------------------------------- stub model
class StubNet(MemoryNetwork):
    """A tiny memory network: everything happens on 16x average-pooled inputs.

    Keys (Ck = 8) and values (Cv = 6) come from 1x1 convs of the pooled frame and masks; the decoder is a 3x3
    conv on (read-out, query value) upsampled x16 and squashed with a sigmoid.
    """

    stride = 16

    def __init__(self, shared_key: bool = False, similarity: str = "dot", seed: int = 0) -> None:
        super().__init__()
        self.shared_key = shared_key
        self.similarity = similarity  # type: ignore[assignment]
        torch.manual_seed(seed)
        self.q_key = nn.Conv2d(3, 8, 1)
        self.q_value = nn.Conv2d(3, 4, 1)
        self.m_key = nn.Conv2d(5, 8, 1)
        self.m_value = nn.Conv2d(5, 6, 1)
        self.dec = nn.Conv2d(10, 1, 3, padding=1)
        with torch.no_grad():
            for conv in (self.q_key, self.m_key, self.m_value):
                conv.weight.mul_(6)
        self.query_inputs: list[tuple[int, ...]] = []
        self.decoded: list[Tensor] = []
        self.memorised: list[Tensor] = []

    def encode_query(self, image: Tensor) -> QueryEncoding:
        self.query_inputs.append(tuple(image.shape))
        f = F.avg_pool2d(image, 16)
        return QueryEncoding(key=self.q_key(f), features={"value": self.q_value(f)})

    def encode_memory(
        self, image: Tensor, query: QueryEncoding | None, masks: Tensor, others: Tensor
    ) -> tuple[Tensor, Tensor]:
        n = masks.shape[0]
        self.memorised.append(masks.clone())
        f = F.avg_pool2d(image, 16).expand(n, -1, -1, -1)
        x = torch.cat([f, F.avg_pool2d(masks[:, None], 16), F.avg_pool2d(others[:, None], 16)], dim=1)
        key = self.q_key(f[:1]) if self.shared_key else self.m_key(x)
        return key, self.m_value(x)

    def decode(self, query: QueryEncoding, readout: Tensor) -> Tensor:
        n = readout.shape[0]
        x = torch.cat([readout, query.features["value"].expand(n, -1, -1, -1)], dim=1)
        logit = F.interpolate(self.dec(x), scale_factor=16, mode="bilinear", align_corners=False)
        self.decoded.append(torch.sigmoid(logit[:, 0]))
        return self.decoded[-1]


class SpyReader:
    """Wraps a MemoryReader and records (memory positions, objects) of every read."""

    def __init__(self, reader: MemoryReader) -> None:
        self.reader = reader
        self.calls: list[tuple[int, int]] = []

    def __call__(
        self, mem_key: Tensor, mem_value: Tensor, query_key: Tensor, query_hw: tuple[int, int]
    ) -> Tensor:
        self.calls.append((mem_key.shape[2], mem_value.shape[0]))
        return self.reader(mem_key, mem_value, query_key, query_hw)


@pytest.fixture(scope="module")
def clip() -> tuple[np.ndarray, np.ndarray]:
    """(T, H, W, 3) uint8 frames and (T, H, W) int32 labels (ids 1, 2)."""
    return render_tiny_clip(num_frames=14, height=H, width=W, seed=3)


def make_session(shared_key: bool = False, **kwargs) -> InferenceSession:
    kwargs.setdefault("precision", "fp32")
    return InferenceSession(
        StubNet(shared_key=shared_key, similarity="l2" if shared_key else "dot"), **kwargs
    )


def run(session: InferenceSession, frames: np.ndarray, masks: dict[int, np.ndarray]) -> Iterator:
    for t, frame in enumerate(frames):
        yield session.step(frame, masks.get(t))


# ---------------------------------------------------------------------------------------------- aggregation
def naive_soft_aggregate(p: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    """(N, H, W) -> (N+1, H, W), pixel by pixel: bg = prod(1 - p); clamp; logit; softmax."""
    n, h, w = p.shape
    out = np.empty((n + 1, h, w))
    for y in range(h):
        for x in range(w):
            em = [math.prod(1 - p[o, y, x] for o in range(n))] + [p[o, y, x] for o in range(n)]
            em = [min(max(v, eps), 1 - eps) for v in em]
            logit = [math.log(v / (1 - v)) for v in em]
            mx = max(logit)
            e = [math.exp(v - mx) for v in logit]
            out[:, y, x] = [v / sum(e) for v in e]
    return out


@pytest.mark.parametrize("channels", [1, 2, 5, 40])
def test_labels_from_probs_is_argmax_first_maximum_with_ids(channels: int) -> None:
    g = torch.Generator().manual_seed(channels)
    probs = torch.softmax(torch.randn(channels, 9, 11, generator=g) * 3, dim=0)
    probs[:, :3, :3] = 1.0 / channels  # exact ties: the first channel wins, as with argmax
    probs[1:, 4, 4] = probs[0, 4, 4] = 0.5 if channels > 1 else 1.0
    ids = [3 * k + 2 for k in range(channels - 1)]  # non-contiguous ids
    want = torch.tensor([0, *ids], dtype=torch.int32)[probs.argmax(dim=0)]
    got = labels_from_probs(probs, ids)
    assert got.dtype == torch.int32
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert (got[:3, :3] == 0).all()
    with pytest.raises(ValueError):
        labels_from_probs(probs, ids + [99])


@pytest.mark.parametrize("split", [[1, 1, 1, 1, 1, 35], [40], [3, 34, 3], [7, 7, 7, 7, 7, 5]])
def test_labels_from_chunks_equals_argmax_of_the_stacked_channels(split: list[int]) -> None:
    g = torch.Generator().manual_seed(len(split))
    probs = torch.softmax(torch.randn(40, 9, 11, generator=g) * 3, dim=0)
    probs[:, :3, :3] = 1.0 / 40  # ties across chunk boundaries: the first channel still wins
    probs[:, 5, 5] = 0.0
    probs[[6, 20, 39], 5, 5] = 0.3  # a tie between channels of different chunks
    ids = [2 * k + 1 for k in range(39)]
    want = torch.tensor([0, *ids], dtype=torch.int32)[probs.argmax(dim=0)]
    got = labels_from_chunks(iter(probs.split(split)), ids)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert got[5, 5] == ids[5]
    with pytest.raises(ValueError):
        labels_from_chunks(iter(probs[:-1].split(split[:-1] + [split[-1] - 1])), ids)


def test_soft_aggregate_matches_reference_formula() -> None:
    g = torch.Generator().manual_seed(0)
    p = torch.rand(3, 5, 6, generator=g, dtype=torch.float64)
    p[0, 0, 0], p[1, 0, 1], p[2, 0, 2] = 0.0, 1.0, 1e-9  # the clamp matters at the extremes
    got = soft_aggregate(p)
    assert got.shape == (4, 5, 6)
    np.testing.assert_allclose(got.numpy(), naive_soft_aggregate(p.numpy()), atol=1e-12)
    torch.testing.assert_close(got.sum(0), torch.ones(5, 6, dtype=torch.float64))


def test_soft_aggregate_float32_sums_to_one_and_dim_argument() -> None:
    g = torch.Generator().manual_seed(1)
    p = torch.rand(2, 3, 4, 5, generator=g)  # (B, N, H, W)
    got = soft_aggregate(p, dim=1)
    assert got.shape == (2, 4, 4, 5)
    torch.testing.assert_close(got.sum(1), torch.ones(2, 4, 5))
    for b in range(2):
        torch.testing.assert_close(got[b], soft_aggregate(p[b]))
        np.testing.assert_allclose(
            got[b].double().numpy(), naive_soft_aggregate(p[b].double().numpy()), atol=1e-5
        )


def test_soft_aggregate_single_object_closed_form() -> None:
    """One object: bg = 1 - p, odds o = p / (1 - p), softmax(log o, -log o) gives p^2 / (p^2 + (1 - p)^2)."""
    p = torch.tensor([[[0.2, 0.9, 0.5]]], dtype=torch.float64)
    got = soft_aggregate(p)
    q = p[0, 0].numpy()
    np.testing.assert_allclose(got[1, 0].numpy(), q**2 / (q**2 + (1 - q) ** 2), atol=1e-12)
    np.testing.assert_allclose(got[0, 0].numpy(), (1 - q) ** 2 / (q**2 + (1 - q) ** 2), atol=1e-12)


# ---------------------------------------------------------------------------------------------- padding
def naive_pad(h: int, w: int, d: int = 16) -> tuple[int, int, int, int]:
    ph = (d - h % d) % d
    pw = (d - w % d) % d
    return pw // 2, pw - pw // 2, ph // 2, ph - ph // 2


@pytest.mark.parametrize(
    ("hw", "expected"),
    [
        ((480, 854), (5, 5, 0, 0)),
        ((240, 427), (2, 3, 0, 0)),
        ((64, 96), (0, 0, 0, 0)),
        ((1, 1), (7, 8, 7, 8)),
        ((1080, 1920), (0, 0, 4, 4)),
        ((48, 70), (5, 5, 0, 0)),
        ((17, 33), (7, 8, 7, 8)),
    ],
)
def test_compute_pad(hw: tuple[int, int], expected: tuple[int, int, int, int]) -> None:
    assert compute_pad(*hw) == expected == naive_pad(*hw)


@pytest.mark.parametrize("hw", [(37, 53), (50, 70), (16, 31), (3, 2), (64, 96)])
def test_pad_unpad_round_trip(hw: tuple[int, int]) -> None:
    x = torch.rand(2, 3, *hw) + 1  # strictly positive: padding zeros are recognisable
    padded, pad = pad_to_multiple(x, 16)
    assert padded.shape[-2] % 16 == 0 and padded.shape[-1] % 16 == 0
    assert padded.shape[-2] - hw[0] < 16 and padded.shape[-1] - hw[1] < 16
    left, _, top, _ = pad
    assert torch.equal(padded[..., top : top + hw[0], left : left + hw[1]], x)
    assert (padded > 0).sum() == x.numel()
    assert torch.equal(unpad(padded, pad), x)


# ---------------------------------------------------------------------------------------------- policy / bank
def test_policy_kinds() -> None:
    p = MemoryPolicy(mem_every=5)
    assert p.kind_for(7, 2, annotated=True) is EntryKind.ANNOTATED
    assert [p.kind_for(t, 2, False) for t in (2, 7, 12)] == [EntryKind.PERIODIC] * 3
    assert p.kind_for(3, 2, False) is EntryKind.TEMPORARY
    assert MemoryPolicy(mem_every=0).kind_for(5, 0, False) is EntryKind.TEMPORARY
    assert MemoryPolicy(mem_every=0, use_previous=False).kind_for(5, 0, False) is None
    with pytest.raises(ValueError):
        MemoryPolicy(mem_every=-1)
    with pytest.raises(ValueError):
        MemoryPolicy(max_frames=0)


def reference_memory(t: int, mem_every: int = 5) -> list[int]:
    """Frames in STM's memory when segmenting frame t >= 1 (reference Run_video): 0, 5, ... + frame t-1."""
    permanent = [f for f in range(0, t) if f % mem_every == 0 and f != t - 1]
    return permanent + [t - 1]


@pytest.mark.parametrize("shared_key", [False, True])
def test_schedule_reproduces_stm_reference(clip, shared_key: bool) -> None:
    frames, labels = clip
    session = make_session(shared_key=shared_key, mem_every=5, max_memory_frames=None)
    spy = SpyReader(session.reader)
    session.reader = spy  # type: ignore[assignment]
    hw = (H // 16) * (W // 16)
    for t, _ in enumerate(run(session, frames[:13], {0: labels[0]})):
        if t == 0:
            assert session.memory.frame_indices == []
            continue
        expected = reference_memory(t)
        assert session.memory.frame_indices == expected, f"memory while segmenting frame {t}"
        kinds = [e.kind for e in session.memory.entries]
        assert kinds[0] is EntryKind.ANNOTATED
        for f, kind in zip(expected[1:], kinds[1:], strict=True):
            want = EntryKind.PERIODIC if f % 5 == 0 else EntryKind.TEMPORARY
            assert kind is want, f"frame {f} in memory of frame {t}"
        # one read per frame over every entry (objects 1 and 2 are in all entries)
        assert spy.calls[-1] == (len(expected) * hw, 2)
    assert len(spy.calls) == 12


def test_schedule_counts_from_first_annotated_frame(clip) -> None:
    frames, labels = clip
    session = make_session(mem_every=4, max_memory_frames=None)
    for t, result in enumerate(run(session, frames[:12], {2: labels[2]})):
        if t < 2:
            assert result.object_ids == [] and (result.labels == 0).all()
            assert len(session.memory) == 0
    assert session.memory.frame_indices == [2, 6, 10]
    assert [e.kind for e in session.memory.entries] == [
        EntryKind.ANNOTATED,
        EntryKind.PERIODIC,
        EntryKind.PERIODIC,
    ]


def _bank_entry(frame: int, kind: EntryKind) -> MemoryEntry:
    return MemoryEntry(frame, kind, torch.zeros(1, 2, 1, 1), torch.zeros(1, 2, 1, 1), (1,))


def test_bank_capacity_evicts_oldest_periodic_never_annotated() -> None:
    bank = MemoryBank(MemoryPolicy(max_frames=4), shared_key=False)
    a, p, tmp = EntryKind.ANNOTATED, EntryKind.PERIODIC, EntryKind.TEMPORARY
    for frame, kind in [(0, a), (1, tmp), (2, p), (3, tmp), (4, p), (5, a), (6, p), (7, tmp)]:
        bank.add(_bank_entry(frame, kind))
        assert len(bank) <= 4
        assert sum(e.kind is tmp for e in bank.entries) <= 1
    assert bank.frame_indices == [0, 5, 6, 7]
    # more annotated frames than the capacity: all kept (plus the previous frame)
    for frame in range(8, 14):
        bank.add(_bank_entry(frame, a))
    bank.add(_bank_entry(14, tmp))
    assert bank.frame_indices == [0, 5, *range(8, 15)]
    assert bank.entries[-1].kind is tmp


def test_bank_unbounded_when_none() -> None:
    bank = MemoryBank(MemoryPolicy(max_frames=None), shared_key=False)
    for frame in range(200):
        bank.add(_bank_entry(frame, EntryKind.PERIODIC))
    assert bank.frame_indices == list(range(200))


def test_session_capacity_and_user_masks_become_annotated(clip) -> None:
    """Capacity 4 with mem_every 2 and user masks on frames 0 and 7: annotated frames stay, the newest
    periodic entries fill the rest, the previous frame is always there."""
    frames, labels = clip
    cap, every, user = 4, 2, {0, 7}
    session = make_session(mem_every=every, max_memory_frames=cap)
    masks = {t: labels[t] for t in user}
    periodic_so_far: list[int] = []
    for t, _ in enumerate(run(session, frames, masks)):
        if t == 0:
            continue
        prev = t - 1
        entries = session.memory.entries
        by_frame = {e.frame_index: e.kind for e in entries}
        assert len(entries) <= cap
        assert entries[-1].frame_index == prev, "the previous frame is read last"
        for f in user:
            if f <= prev:
                assert by_frame[f] is EntryKind.ANNOTATED, f"user frame {f} at step {t}"
        if prev not in user and prev % every == 0:
            periodic_so_far.append(prev)
        kept = sorted(f for f, k in by_frame.items() if k is EntryKind.PERIODIC)
        n_annotated = sum(k is EntryKind.ANNOTATED for k in by_frame.values())
        n_temp = sum(k is EntryKind.TEMPORARY for k in by_frame.values())
        assert kept == periodic_so_far[len(periodic_so_far) - (cap - n_annotated - n_temp) :] or (
            kept == periodic_so_far and len(periodic_so_far) <= cap - n_annotated - n_temp
        ), f"step {t}: periodic {kept}, produced {periodic_so_far}"
    assert 7 in session.memory.frame_indices and 0 in session.memory.frame_indices


def test_session_unbounded_memory_keeps_every_periodic_frame(clip) -> None:
    frames, labels = clip
    session = make_session(mem_every=1, max_memory_frames=None)
    list(run(session, frames, {0: labels[0]}))
    assert session.memory.frame_indices == list(range(len(frames) - 1))


def test_default_capacity_is_the_models() -> None:
    net = StubNet()
    net.default_max_memory_frames = 3
    assert InferenceSession(net, precision="fp32").policy.max_frames == 3
    assert InferenceSession(net, precision="fp32", max_memory_frames=None).policy.max_frames is None


# ---------------------------------------------------------------------------------------------- session
def test_first_frame_output_is_the_given_mask(clip) -> None:
    frames, labels = clip
    session = make_session()
    r = session.step(frames[0], labels[0])
    assert r.index == 0 and r.object_ids == [1, 2]
    np.testing.assert_array_equal(r.labels, labels[0])
    assert r.probs.shape == (3, H, W)
    onehot = np.stack([labels[0] == k for k in (0, 1, 2)]).astype(np.float32)
    np.testing.assert_array_equal(r.probs.numpy(), onehot)


@pytest.mark.parametrize("shared_key", [False, True])
def test_outputs_are_consistent_distributions(clip, shared_key: bool) -> None:
    frames, labels = clip
    session = make_session(shared_key=shared_key)
    seen = set()
    for r in run(session, frames[:6], {0: labels[0]}):
        assert r.labels.dtype == np.int32 and r.labels.shape == (H, W)
        torch.testing.assert_close(r.probs.sum(0), torch.ones(H, W))
        lut = np.array([0, *r.object_ids])
        np.testing.assert_array_equal(r.labels, lut[r.probs.argmax(0).numpy()])
        seen |= set(np.unique(r.labels).tolist())
    assert seen <= {0, 1, 2}


def test_objects_appearing_mid_video(clip) -> None:
    """Object 3 given on frame 3 (with its own mask only): ids kept, read only from entries holding it."""
    frames, labels = clip
    mask3 = np.zeros((H, W), np.int32)
    mask3[40:56, 10:30] = 3
    session = make_session(mem_every=5, max_memory_frames=None)
    spy = SpyReader(session.reader)
    session.reader = spy  # type: ignore[assignment]
    hw = (H // 16) * (W // 16)
    results = []
    for t, frame in enumerate(frames[:8]):
        spy.calls.clear()
        results.append(session.step(frame, {0: labels[0], 3: mask3}.get(t)))
        if t == 4:  # memory: frame 0 (ids 1, 2), frame 3 (annotated, ids 1, 2, 3)
            assert session.memory.frame_indices == [0, 3]
            assert [e.object_ids for e in session.memory.entries] == [(1, 2), (1, 2, 3)]
            assert sorted(spy.calls) == sorted([(2 * hw, 2), (hw, 1)])
    assert [r.object_ids for r in results[:3]] == [[1, 2]] * 3
    assert all(r.object_ids == [1, 2, 3] for r in results[3:])
    assert not any((r.labels == 3).any() for r in results[:3])
    assert (results[3].labels[mask3 == 3] == 3).all()
    assert session.memory.entries[1].kind is EntryKind.ANNOTATED
    # objects 1 and 2 keep their prediction where the new mask says nothing
    plain = make_session(mem_every=5, max_memory_frames=None)
    plain_results = [plain.step(f, {0: labels[0]}.get(t)) for t, f in enumerate(frames[:4])]
    outside = mask3 == 0
    np.testing.assert_array_equal(results[3].labels[outside], plain_results[3].labels[outside])


def test_non_contiguous_ids_come_back_unchanged(clip) -> None:
    frames, labels = clip
    remap = np.array([0, 7, 200], np.int32)
    mask = remap[labels[0]]
    mask[0:10, 0:12] = 3
    session = make_session()
    results = list(run(session, frames[:5], {0: mask}))
    assert results[0].object_ids == [3, 7, 200]
    np.testing.assert_array_equal(results[0].labels, mask)
    for r in results[1:]:
        assert r.object_ids == [3, 7, 200]
        assert set(np.unique(r.labels).tolist()) <= {0, 3, 7, 200}
        lut = np.array([0, 3, 7, 200])
        np.testing.assert_array_equal(r.labels, lut[r.probs.argmax(0).numpy()])


def test_objects_argument_semantics(clip) -> None:
    frames, labels = clip
    ref = make_session()
    list(run(ref, frames[:3], {0: labels[0]}))
    only1 = np.where(labels[2] == 1, 1, 0).astype(np.int32)

    # listed-but-absent: object 2 is absent on frame 2
    s = make_session()
    s.step(frames[0], labels[0])
    s.step(frames[1])
    r = s.step(frames[2], only1, objects=[1, 2])
    assert r.object_ids == [1, 2]
    assert not (r.labels == 2).any()
    assert (r.probs[2] == 0).all()
    np.testing.assert_array_equal(r.labels, only1)
    assert s.index == 3

    # unlisted tracked object keeps its prediction outside the given pixels; object 1 being known there
    # (absent outside its given pixels), object 2 is aggregated with the background only
    s = make_session()
    s.step(frames[0], labels[0])
    s.step(frames[1])
    r = s.step(frames[2], only1, objects=[1])
    assert r.object_ids == [1, 2]
    given = only1 > 0
    np.testing.assert_array_equal(r.labels[given], 1)
    raw2 = ref.model.decoded[-1][1]  # object 2's decoder output on frame 2 (same memory in both runs)
    expected2 = soft_aggregate(raw2[None])[1].numpy() * ~given
    np.testing.assert_allclose(r.probs[2].numpy(), expected2, atol=1e-6)
    assert (r.probs[1].numpy() == given).all()
    s.step(frames[3])  # frame 2 enters memory with exactly these probabilities
    memorised = s.model.memorised[-1]
    assert s.memory.entries[-1].frame_index == 2 and s.memory.entries[-1].kind is EntryKind.ANNOTATED
    torch.testing.assert_close(memorised, r.probs[1:])

    # a mask with an id not listed in objects is refused
    s = make_session()
    s.step(frames[0], labels[0])
    with pytest.raises(InputError, match="not listed"):
        s.step(frames[1], labels[1], objects=[1])


def test_listed_new_id_absent_everywhere_is_ignored(clip) -> None:
    frames, labels = clip
    s = make_session()
    r = s.step(frames[0], np.zeros((H, W), np.int32), objects=[5])
    assert r.object_ids == [] and (r.labels == 0).all()
    r = s.step(frames[1], labels[1])
    assert r.object_ids == [1, 2]
    np.testing.assert_array_equal(r.labels, labels[1])


def test_deterministic(clip) -> None:
    frames, labels = clip
    a = list(run(make_session(), frames[:6], {0: labels[0]}))
    b = list(run(make_session(), frames[:6], {0: labels[0]}))
    for ra, rb in zip(a, b, strict=True):
        np.testing.assert_array_equal(ra.labels, rb.labels)
        assert torch.equal(ra.probs, rb.probs)


def test_reset_gives_the_same_run_again(clip) -> None:
    frames, labels = clip
    s = make_session()
    a = list(run(s, frames[:4], {0: labels[0]}))
    s.reset()
    assert s.index == 0 and len(s.memory) == 0 and s.object_ids == []
    b = list(run(s, frames[:4], {0: labels[0]}))
    for ra, rb in zip(a, b, strict=True):
        assert torch.equal(ra.probs, rb.probs)


def test_frame_size_change_is_an_input_error(clip) -> None:
    frames, labels = clip
    s = make_session()
    s.step(frames[0], labels[0])
    with pytest.raises(InputError, match="frame 1"):
        s.step(frames[1][:-2])


def test_mask_size_mismatch_is_an_input_error(clip) -> None:
    frames, labels = clip
    s = make_session()
    with pytest.raises(InputError, match="mask"):
        s.step(frames[0], labels[0][:, :-1])


def test_bad_image_shape_is_an_input_error() -> None:
    s = make_session()
    with pytest.raises(InputError):
        s.step(np.zeros((H, W), np.uint8))
    with pytest.raises(InputError):
        s.step(torch.zeros(H, W, 3))


def test_tensor_input_equals_uint8_input(clip) -> None:
    frames, labels = clip
    a = list(run(make_session(), frames[:3], {0: labels[0]}))
    s = make_session()
    tensors = [torch.from_numpy(f).permute(2, 0, 1).float() / 255 for f in frames[:3]]
    b = [s.step(t, labels[0] if i == 0 else None) for i, t in enumerate(tensors)]
    for ra, rb in zip(a, b, strict=True):
        torch.testing.assert_close(ra.probs, rb.probs)


def test_many_objects(clip) -> None:
    frames, _ = clip
    mask = np.zeros((H, W), np.int32)
    ids = list(range(1, 26))
    for k, oid in enumerate(ids):  # 25 objects on a 5 x 5 grid of small squares
        y, x = divmod(k, 5)
        mask[2 + 12 * y : 10 + 12 * y, 4 + 18 * x : 16 + 18 * x] = oid
    s = make_session()
    results = list(run(s, frames[:4], {0: mask}))
    assert results[0].object_ids == ids
    np.testing.assert_array_equal(results[0].labels, mask)
    for r in results[1:]:
        assert r.probs.shape == (26, H, W)
        assert set(np.unique(r.labels).tolist()) <= {0, *ids}
        torch.testing.assert_close(r.probs.sum(0), torch.ones(H, W))
    assert [e.value.shape[0] for e in s.memory.entries] == [25, 25]


@pytest.mark.parametrize("n", [3, 17, 25])
def test_others_channel_is_clamped_sum_of_the_other_objects(n: int) -> None:
    masks = torch.rand(n, 5, 7, generator=torch.Generator().manual_seed(n)) * 0.4
    got = others_of(masks)
    for o in range(n):
        want = (masks.sum(0) - masks[o]).clamp(0, 1)
        torch.testing.assert_close(got[o], want, atol=1e-6, rtol=0)
    batched = others_of(masks[None].expand(2, -1, -1, -1), dim=1)  # training's (B, O, H, W) layout
    torch.testing.assert_close(batched[1], got, atol=0, rtol=0)


def test_processing_size_returns_full_size_labels(clip) -> None:
    frames, labels = clip
    s = make_session(size=32)
    net = s.model
    results = list(run(s, frames[:4], {0: labels[0]}))
    assert net.query_inputs and all(shape == (1, 3, 32, 48) for shape in net.query_inputs)
    for r in results:
        assert r.labels.shape == (H, W) and r.probs.shape == (3, H, W)
    np.testing.assert_array_equal(results[0].labels, labels[0])  # given pixels are exact at full size
    # processing at the original size, or at a larger size (never upscaled), is the same as no resizing
    for size in (H, 2 * H):
        a = list(run(make_session(size=size), frames[:3], {0: labels[0]}))
        b = list(run(make_session(), frames[:3], {0: labels[0]}))
        for ra, rb in zip(a, b, strict=True):
            assert torch.equal(ra.probs, rb.probs)
    a = list(run(make_session(size=0), frames[:3], {0: labels[0]}))
    b = list(run(make_session(), frames[:3], {0: labels[0]}))
    for ra, rb in zip(a, b, strict=True):
        assert torch.equal(ra.probs, rb.probs)


def test_downscaled_many_objects_labels_by_channel_chunks_equal_one_upsampling(clip, monkeypatch) -> None:
    frames, _ = clip
    mask = np.zeros((H, W), np.int32)
    for k in range(12):  # 12 objects on a 3 x 4 grid
        y, x = divmod(k, 4)
        mask[4 + 20 * y : 18 + 20 * y, 4 + 24 * x : 22 + 24 * x] = k + 1
    whole = list(run(make_session(size=32), frames[:4], {0: mask}))
    monkeypatch.setattr(session_module, "LABEL_CHUNK_ELEMENTS", 5 * H * W)  # 5-channel chunks
    chunked = list(run(make_session(size=32), frames[:4], {0: mask}))
    assert chunked[1]._probs is None  # not upsampled until asked for
    for a, b in zip(whole, chunked, strict=True):
        np.testing.assert_array_equal(a.labels, b.labels)
        assert torch.equal(a.probs, b.probs) and b.probs.shape == (13, H, W)
        np.testing.assert_array_equal(b.labels, b.probs.argmax(0).numpy())  # ids are 1..12 here


def test_odd_frame_size_is_padded_and_cropped(clip) -> None:
    frames, labels = clip
    h, w = 50, 70
    s = make_session()
    results = list(run(s, frames[:3, :h, :w], {0: labels[0, :h, :w]}))
    assert s.model.query_inputs[-1] == (1, 3, 64, 80)
    n = len(np.unique(labels[0, :h, :w])) - 1
    for r in results:
        assert r.labels.shape == (h, w) and r.probs.shape == (n + 1, h, w)


def test_remove_object(clip) -> None:
    frames, labels = clip
    s = make_session()
    s.step(frames[0], labels[0])
    s.step(frames[1])
    s.remove_object(1)
    assert s.object_ids == [2]
    assert all(e.object_ids == (2,) for e in s.memory.entries)
    assert s.memory.frame_indices == [0, 1]
    for e in s.memory.entries:  # memory written by remove_object must not carry an autograd graph
        assert not e.key.requires_grad and not e.value.requires_grad
    r = s.step(frames[2])
    assert r.object_ids == [2] and r.probs.shape == (2, H, W)
    assert not (r.labels == 1).any()
    with pytest.raises(KeyError):
        s.remove_object(1)


def test_propagate_yields_every_frame(clip) -> None:
    frames, labels = clip
    s = make_session()
    results = list(s.propagate(frames[:5], {0: labels[0], 3: np.where(labels[3] == 2, 2, 0)}))
    assert [r.index for r in results] == list(range(5))
    b = list(run(make_session(), frames[:5], {0: labels[0], 3: np.where(labels[3] == 2, 2, 0)}))
    for ra, rb in zip(results, b, strict=True):
        assert torch.equal(ra.probs, rb.probs)


def test_bad_precision_and_device() -> None:
    with pytest.raises(InputError, match="unknown precision"):
        InferenceSession(StubNet(), precision="fp64")  # type: ignore[arg-type]
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="cuda"):
            InferenceSession(StubNet(), device="cuda")


# ---------------------------------------------------------------------------------------------- compile
def _lite_session(**kwargs) -> InferenceSession:
    from memvos.models.lite import LiteMemoryNetwork

    torch.manual_seed(0)
    return InferenceSession(LiteMemoryNetwork(pretrained_backbone=False), device="cpu", **kwargs)


def test_compiled_encoder_gives_the_eager_masks(clip) -> None:
    frames, labels = clip
    eager = [r.probs for r in run(_lite_session(precision="fp32"), frames[:4], {0: labels[0]})]
    session = _lite_session(precision="fp32", compile=True)
    compiled = [r.probs for r in run(session, frames[:4], {0: labels[0]})]
    assert session.compile and session._compiled_encoder is not None  # it really ran compiled
    for a, b in zip(eager, compiled, strict=True):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)


def test_compile_failure_falls_back_to_eager(clip, monkeypatch, caplog) -> None:
    frames, labels = clip

    def broken_compile(fn, **kwargs):
        def call(*args):
            raise RuntimeError("no C++ compiler here")

        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    eager = [r.labels for r in run(_lite_session(precision="fp32"), frames[:3], {0: labels[0]})]
    session = _lite_session(precision="fp32", compile=True)
    with caplog.at_level("WARNING"):
        got = [r.labels for r in run(session, frames[:3], {0: labels[0]})]
    assert not session.compile
    assert "torch.compile failed (RuntimeError: no C++ compiler here)" in caplog.text
    for a, b in zip(eager, got, strict=True):
        np.testing.assert_array_equal(a, b)
