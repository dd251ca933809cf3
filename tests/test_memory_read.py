"""Memory read maths (``memvos.memory.read``) and ``MemoryBank.read`` against naive re-computations.

The naive versions below loop over batch entries / objects and use float64 numpy; they restate the formulas of
``../shared/reference/stm-architecture.md`` (STM read, KMN kernelized read) without sharing code with memvos.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from memvos.memory.bank import MemoryBank, MemoryEntry
from memvos.memory.policy import EntryKind, MemoryPolicy
from memvos.memory.read import MemoryReader, affinity, read_weights

ATOL = 2e-5


# ---------------------------------------------------------------------------------------------- naive maths
def naive_affinity(mk: np.ndarray, qk: np.ndarray, similarity: str) -> np.ndarray:
    """mk (Ck, M), qk (Ck, Q) -> (M, Q), loops over memory positions."""
    ck, m = mk.shape
    out = np.empty((m, qk.shape[1]))
    for i in range(m):
        if similarity == "dot":
            out[i] = (mk[:, i : i + 1] * qk).sum(0) / math.sqrt(ck)
        else:
            out[i] = -((mk[:, i : i + 1] - qk) ** 2).sum(0) / math.sqrt(ck)
    return out


def naive_weights(
    aff: np.ndarray, kind: str, hw: tuple[int, int], sigma: float = 7.0, top_k: int | None = None
) -> np.ndarray:
    """(M, Q) affinity -> (M, Q) read weights normalised over memory positions (the doc's formulas)."""
    m, q = aff.shape
    a = aff.copy()
    if top_k is not None and top_k < m:
        for j in range(q):
            keep = np.argsort(-a[:, j], kind="stable")[:top_k]
            drop = np.ones(m, bool)
            drop[keep] = False
            a[drop, j] = -np.inf
    w = np.exp(a - a.max(0, keepdims=True))
    w /= w.sum(0, keepdims=True)
    if kind == "kmn":
        h, wd = hw
        g = np.empty((m, q))
        for i in range(m):
            best = int(np.argmax(aff[i]))  # first maximum over the query grid (on the full affinity)
            by, bx = divmod(best, wd)
            for j in range(q):
                y, x = divmod(j, wd)
                g[i, j] = math.exp(-((y - by) ** 2 + (x - bx) ** 2) / (2 * sigma * sigma))
        w = w * g
        w /= w.sum(0, keepdims=True)
    return w


def naive_read(
    mk: torch.Tensor,
    mv: torch.Tensor,
    qk: torch.Tensor,
    hw: tuple[int, int],
    kind: str = "stm",
    similarity: str = "dot",
    sigma: float = 7.0,
    top_k: int | None = None,
) -> np.ndarray:
    """mk (B, Ck, M), mv (N, Cv, M), qk (B, Ck, Q) -> (N, Cv, Q), one object at a time."""
    mk64, mv64, qk64 = (t.double().numpy() for t in (mk, mv, qk))
    n = mv.shape[0]
    out = np.empty((n, mv.shape[1], qk.shape[2]))
    for o in range(n):
        b = 0 if mk.shape[0] == 1 else o
        aff = naive_affinity(mk64[b], qk64[b], similarity)
        w = naive_weights(aff, kind, hw, sigma, top_k)
        out[o] = np.einsum("ci,ij->cj", mv64[o], w)
    return out


def random_kv(b: int, n: int, ck: int, cv: int, t: int, hw: tuple[int, int], seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    m, q = t * hw[0] * hw[1], hw[0] * hw[1]
    mk = torch.randn(b, ck, m, generator=g)
    mv = torch.randn(n, cv, m, generator=g)
    qk = torch.randn(b, ck, q, generator=g)
    return mk, mv, qk


# ---------------------------------------------------------------------------------------------- affinity
@pytest.mark.parametrize("similarity", ["dot", "l2"])
def test_affinity_matches_naive(similarity: str) -> None:
    mk, _, qk = random_kv(2, 2, 8, 4, 2, (3, 4))
    got = affinity(mk, qk, similarity).double().numpy()
    for b in range(2):
        want = naive_affinity(mk[b].double().numpy(), qk[b].double().numpy(), similarity)
        np.testing.assert_allclose(got[b], want, atol=1e-4, rtol=1e-5)


def test_affinity_rejects_unknown_similarity() -> None:
    mk, _, qk = random_kv(1, 1, 4, 4, 1, (2, 2))
    with pytest.raises(ValueError, match="similarity"):
        affinity(mk, qk, "cosine")


# ---------------------------------------------------------------------------------------------- STM read
@pytest.mark.parametrize("similarity", ["dot", "l2"])
def test_stm_read_equals_naive_softmax_over_memory(similarity: str) -> None:
    hw = (3, 5)
    mk, mv, qk = random_kv(2, 2, 16, 6, 3, hw, seed=1)
    got = MemoryReader(kind="stm", similarity=similarity)(mk, mv, qk, hw)
    assert got.shape == (2, 6, 15)
    want = naive_read(mk, mv, qk, hw, "stm", similarity)
    np.testing.assert_allclose(got.double().numpy(), want, atol=ATOL)


@pytest.mark.parametrize("exact", [False, True])
@pytest.mark.parametrize("kind", ["stm", "kmn"])
@pytest.mark.parametrize("similarity", ["dot", "l2"])
def test_exact_and_fast_layouts_equal_naive(exact: bool, kind: str, similarity: str) -> None:
    """Both computation layouts (reference (B, M, Q) and query-major chunks) are the same read."""
    hw = (3, 5)
    mk, mv, qk = random_kv(2, 2, 8, 4, 3, hw, seed=4)
    reader = MemoryReader(kind=kind, sigma=2.0, similarity=similarity, exact=exact, chunk_elements=100)
    got = reader(mk, mv, qk, hw)
    want = naive_read(mk, mv, qk, hw, kind, similarity, sigma=2.0)
    np.testing.assert_allclose(got.double().numpy(), want, atol=ATOL)


def test_fast_read_under_bf16_autocast_keeps_float32_affinity() -> None:
    """bf16 keys/values under autocast: the affinity and softmax still run in float32 (l2 keys of norm
    ~10 differ by less than bf16's resolution), so the read stays close to the float32 one."""
    hw = (4, 6)
    mk, mv, qk = random_kv(1, 2, 16, 8, 4, hw, seed=5)
    mk, mv, qk = (t.mul(3).bfloat16() for t in (mk, mv, qk))
    want = MemoryReader(similarity="l2")(mk.float(), mv.float(), qk.float(), hw)  # same rounded inputs
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = MemoryReader(similarity="l2")(mk, mv, qk, hw)
    assert got.dtype == torch.bfloat16
    # only the weights and the weighted sum are rounded to bf16 (~3 significant digits)
    torch.testing.assert_close(got.float(), want, atol=0.03, rtol=0.02)
    # a bf16 affinity would be far off: |k|^2 ~ 150, bf16 steps of 1 there
    aff_bf16 = (2 * torch.bmm(mk.transpose(1, 2), qk) - mk.pow(2).sum(1)[..., None]).float() / 4.0
    aff_fp32 = (
        2 * torch.bmm(mk.float().transpose(1, 2), qk.float()) - mk.float().pow(2).sum(1)[..., None]
    ) / 4
    assert (aff_bf16 - aff_fp32).abs().max() > 0.1


@pytest.mark.parametrize("kind", ["stm", "kmn"])
@pytest.mark.parametrize("chunk", [1, 90, 300, 10**9])
def test_chunked_read_equals_unchunked(kind: str, chunk: int) -> None:
    hw = (3, 5)
    mk, mv, qk = random_kv(2, 2, 8, 4, 3, hw, seed=2)  # M = 45, Q = 15
    full = MemoryReader(kind=kind, sigma=2.0)(mk, mv, qk, hw)
    reader = MemoryReader(kind=kind, sigma=2.0, chunk_elements=chunk)
    if chunk < 10**9:
        assert len(reader._chunks(45, 15)) > 1 or chunk >= 45 * 15
    got = reader(mk, mv, qk, hw)
    torch.testing.assert_close(got, full, atol=1e-6, rtol=1e-5)
    want = naive_read(mk, mv, qk, hw, kind, sigma=2.0)
    np.testing.assert_allclose(got.double().numpy(), want, atol=ATOL)


def test_read_weights_sum_to_one_over_memory() -> None:
    aff = torch.randn(2, 30, 12, generator=torch.Generator().manual_seed(3)) * 4
    for kind, kernel in (("stm", None), ("kmn", torch.rand(2, 30, 12) + 0.01)):
        w = read_weights(aff, kind, kernel=kernel)
        torch.testing.assert_close(w.sum(1), torch.ones(2, 12))
        assert (w >= 0).all()


def test_read_weights_rejects_bad_arguments() -> None:
    aff = torch.zeros(1, 3, 2)
    with pytest.raises(ValueError, match="kernel"):
        read_weights(aff, "kmn")
    with pytest.raises(ValueError, match="unknown memory read"):
        read_weights(aff, "xmn")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        MemoryReader(kind="xmn")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        MemoryReader(top_k=0)
    with pytest.raises(ValueError):
        MemoryReader(sigma=0.0)


# ---------------------------------------------------------------------------------------------- KMN
@pytest.mark.parametrize("sigma", [0.7, 3.0, 7.0])
@pytest.mark.parametrize("similarity", ["dot", "l2"])
def test_kmn_read_equals_naive_formula(sigma: float, similarity: str) -> None:
    hw = (4, 5)
    mk, mv, qk = random_kv(2, 2, 8, 5, 2, hw, seed=4)
    mk, qk = mk * 3, qk * 3  # peaky affinities: the kernel matters
    got = MemoryReader(kind="kmn", sigma=sigma, similarity=similarity)(mk, mv, qk, hw)
    want = naive_read(mk, mv, qk, hw, "kmn", similarity, sigma=sigma)
    np.testing.assert_allclose(got.double().numpy(), want, atol=ATOL)
    stm = naive_read(mk, mv, qk, hw, "stm", similarity)
    if sigma < 5:
        assert np.abs(want - stm).max() > 1e-3, "the kernel should change the read (else the test is void)"


def test_kmn_best_query_match_chunked_first_maximum_on_ties() -> None:
    """Integer keys give exact ties between query positions in different chunks: the first one must win."""
    hw = (3, 4)
    q = hw[0] * hw[1]
    g = torch.Generator().manual_seed(5)
    qk = torch.randint(-2, 3, (1, 4, q), generator=g).float()
    # Duplicate query columns so that several query positions tie for every memory position's best match.
    for src, dst in ((1, 6), (1, 11), (2, 3), (5, 9), (0, 10)):
        qk[:, :, dst] = qk[:, :, src]
    mk = torch.cat(
        [qk[:, :, [1, 2, 5, 0, 6, 9, 3]], torch.randint(-2, 3, (1, 4, 5), generator=g).float()], dim=2
    )
    m = mk.shape[2]
    want = np.array(
        [int(np.argmax(row)) for row in naive_affinity(mk[0].double().numpy(), qk[0].double().numpy(), "dot")]
    )
    aff = naive_affinity(mk[0].double().numpy(), qk[0].double().numpy(), "dot")
    n_ties = sum(int((row == row.max()).sum() > 1) for row in aff)
    assert n_ties >= 3, "the construction must produce ties"
    for chunk in (m * 1, m * 2, m * 5, m * q):
        reader = MemoryReader(kind="kmn", sigma=1.5, chunk_elements=chunk)
        got = reader.best_query_match(mk, qk)
        assert got.shape == (1, m)
        np.testing.assert_array_equal(got[0].numpy(), want, err_msg=f"chunk_elements={chunk}")
        mv = torch.randn(1, 3, m, generator=g)
        read = reader(mk, mv, qk, hw)
        np.testing.assert_allclose(
            read.double().numpy(), naive_read(mk, mv, qk, hw, "kmn", sigma=1.5), atol=ATOL
        )


# ---------------------------------------------------------------------------------------------- top-k
@pytest.mark.parametrize("k", [1, 3, 10])
def test_top_k_keeps_exactly_k_positions(k: int) -> None:
    aff = torch.randn(2, 24, 9, generator=torch.Generator().manual_seed(6)) * 3
    w = read_weights(aff, "stm", top_k=k)
    assert ((w > 0).sum(1) == k).all()
    kept = w > 0
    top = aff.topk(k, dim=1).indices
    assert torch.equal(kept, torch.zeros_like(kept).scatter_(1, top, True))
    torch.testing.assert_close(w.sum(1), torch.ones(2, 9))


@pytest.mark.parametrize("kind", ["stm", "kmn"])
def test_top_k_read_equals_naive(kind: str) -> None:
    hw = (3, 4)
    mk, mv, qk = random_kv(2, 2, 8, 4, 3, hw, seed=7)
    got = MemoryReader(kind=kind, top_k=5, sigma=2.0, chunk_elements=36 * 5)(mk, mv, qk, hw)
    want = naive_read(mk, mv, qk, hw, kind, sigma=2.0, top_k=5)
    np.testing.assert_allclose(got.double().numpy(), want, atol=ATOL)
    full = naive_read(mk, mv, qk, hw, kind, sigma=2.0)
    assert np.abs(want - full).max() > 1e-3


def test_top_k_larger_than_memory_is_plain_read() -> None:
    hw = (2, 3)
    mk, mv, qk = random_kv(1, 1, 4, 3, 1, hw, seed=8)
    torch.testing.assert_close(MemoryReader(top_k=100)(mk, mv, qk, hw), MemoryReader()(mk, mv, qk, hw))


# ---------------------------------------------------------------------------------------------- shared key
@pytest.mark.parametrize("kind", ["stm", "kmn"])
def test_shared_key_equals_per_object_reads(kind: str) -> None:
    hw = (3, 4)
    mk, mv, qk = random_kv(1, 3, 8, 5, 2, hw, seed=9)
    reader = MemoryReader(kind=kind, sigma=2.0, similarity="l2", chunk_elements=50)
    shared = reader(mk, mv, qk, hw)
    assert shared.shape == (3, 5, 12)
    for o in range(3):
        single = reader(mk, mv[o : o + 1], qk, hw)
        torch.testing.assert_close(shared[o : o + 1], single, atol=1e-6, rtol=1e-5)
    # and with the key repeated per object (the per-object-key code path)
    per_object = reader(mk.expand(3, -1, -1), mv, qk.expand(3, -1, -1), hw)
    torch.testing.assert_close(shared, per_object, atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------------------------------------ MemoryBank.read
def _entry(frame: int, ids: tuple[int, ...], shared: bool, g: torch.Generator, hw=(2, 3)) -> MemoryEntry:
    k = 1 if shared else len(ids)
    return MemoryEntry(
        frame,
        EntryKind.PERIODIC,
        torch.randn(k, 6, *hw, generator=g),
        torch.randn(len(ids), 4, *hw, generator=g),
        ids,
    )


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("kind", ["stm", "kmn"])
def test_bank_read_uses_only_entries_holding_each_object(shared: bool, kind: str) -> None:
    """Objects appearing later (3 on frame 1, 9 on frame 2) are read only from the entries that hold them."""
    g = torch.Generator().manual_seed(10)
    hw = (2, 3)
    bank = MemoryBank(MemoryPolicy(mem_every=1, max_frames=None), shared_key=shared)
    bank.add(_entry(0, (1, 2), shared, g))
    bank.add(_entry(1, (1, 2, 3), shared, g))
    bank.add(_entry(2, (9, 1, 2, 3), shared, g))
    qk = torch.randn(1, 6, *hw, generator=g)
    reader = MemoryReader(kind=kind, sigma=1.0)
    wanted = [3, 1, 9, 2]
    got = bank.read(reader, qk, wanted)
    assert got.shape == (4, 4, *hw)
    for pos, oid in enumerate(wanted):
        keys, values = [], []
        for e in bank.entries:
            if oid not in e.object_ids:
                continue
            row = e.object_ids.index(oid)
            keys.append(e.key[0 if shared else row].reshape(6, -1))
            values.append(e.value[row].reshape(4, -1))
        mk = torch.cat(keys, 1)[None]
        mv = torch.cat(values, 1)[None]
        want = naive_read(mk, mv, qk.reshape(1, 6, -1), hw, kind, sigma=1.0)
        np.testing.assert_allclose(
            got[pos].reshape(1, 4, -1).double().numpy(), want, atol=ATOL, err_msg=f"object {oid}"
        )


def test_bank_read_unknown_object_raises() -> None:
    g = torch.Generator().manual_seed(11)
    bank = MemoryBank(MemoryPolicy(), shared_key=False)
    bank.add(_entry(0, (1,), False, g))
    with pytest.raises(KeyError):
        bank.read(MemoryReader(), torch.randn(1, 6, 2, 3), [1, 5])


@pytest.mark.parametrize("shared", [False, True])
def test_bank_remove_object_drops_rows_and_empty_entries(shared: bool) -> None:
    g = torch.Generator().manual_seed(12)
    bank = MemoryBank(MemoryPolicy(max_frames=None), shared_key=shared)
    e0, e1 = _entry(0, (4,), shared, g), _entry(1, (4, 7), shared, g)
    bank.add(e0)
    bank.add(e1)
    bank.remove_object(4)
    assert bank.frame_indices == [1]
    (kept,) = bank.entries
    assert kept.object_ids == (7,)
    torch.testing.assert_close(kept.value, e1.value[1:2])
    torch.testing.assert_close(kept.key, e1.key if shared else e1.key[1:2])


def test_bf16_affinity_flag_rounds_the_affinity_and_stays_a_read() -> None:
    """``bf16_affinity``: only under bf16 values does the affinity GEMM run in bf16; the output is still a
    convex combination of the memory values, and float32 values ignore the flag."""
    hw = (4, 6)
    mk, mv, qk = random_kv(1, 2, 16, 8, 4, hw, seed=5)
    exact32 = MemoryReader(similarity="l2")(mk, mv, qk, hw)
    torch.testing.assert_close(MemoryReader(similarity="l2", bf16_affinity=True)(mk, mv, qk, hw), exact32)
    mk, mv, qk = (t.mul(3).bfloat16() for t in (mk, mv, qk))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = MemoryReader(similarity="l2", bf16_affinity=True)(mk, mv, qk, hw).float()
        safe = MemoryReader(similarity="l2")(mk, mv, qk, hw).float()
    assert not torch.equal(fast, safe)  # the affinity really was rounded
    lo = mv.float().amin(dim=2, keepdim=True) - 0.05
    hi = mv.float().amax(dim=2, keepdim=True) + 0.05
    assert ((fast >= lo) & (fast <= hi)).all()
