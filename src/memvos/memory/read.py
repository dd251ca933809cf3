"""Similarity maths of the memory read: affinity, STM softmax read, KMN kernelized read, top-k.

Notation: M memory positions (T frames x h x w, frame-major), Q query positions (h x w), Ck/Cv key/value
channels, B a batch (objects with their own keys, or 1 when the key is shared).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from memvos.errors import OptionError

ReadKind = Literal["stm", "kmn"]

#: Affinity elements (query chunk x M) materialised at once per batch entry. Small enough (2 MiB of
#: float32) for a chunk's affinity, softmax and weights to stay in cache: the read is memory-bound, and
#: chunks of this size measured 1.8-2x faster than one (Q x M) matrix at 480p (see BENCHMARKS.md).
DEFAULT_CHUNK_ELEMENTS = 1 << 19
#: Chunk of the exact (reference-layout) path: large, so that small inputs run as one bmm like the reference.
EXACT_CHUNK_ELEMENTS = 1 << 25


def affinity(mem_key: Tensor, query_key: Tensor, similarity: str = "dot") -> Tensor:
    """Scaled affinity between every memory and query position.

    Args:
        mem_key: (B, Ck, M); query_key: (B, Ck, Q).
        similarity: "dot": k_M . k_Q / sqrt(Ck) (STM). "l2": -||k_M - k_Q||^2 / sqrt(Ck) (STCN).
    Returns:
        (B, M, Q).
    """
    # Divided by sqrt(Ck) (not multiplied by its inverse) so that float32 results equal the STM reference's.
    norm = math.sqrt(mem_key.shape[1])
    aff = torch.bmm(mem_key.transpose(1, 2), query_key)
    if similarity == "dot":
        return aff / norm
    if similarity == "l2":
        m_sq = mem_key.pow(2).sum(1).unsqueeze(2)  # (B, M, 1)
        q_sq = query_key.pow(2).sum(1).unsqueeze(1)  # (B, 1, Q)
        return (2 * aff - m_sq - q_sq) / norm
    raise ValueError(f"unknown similarity {similarity!r}")


def query_affinity(
    mem_key: Tensor, query_key: Tensor, similarity: str = "dot", mem_sq: Tensor | None = None
) -> Tensor:
    """The affinity of :func:`affinity`, query-major and up to a per-query constant: (B, Q, M).

    For "l2" the -||k_Q||^2 term is left out: it is constant over memory positions, so a softmax over M
    (the memory read) is unchanged. Laid out (B, Q, M) so that the softmax over M runs along contiguous
    memory. ``mem_sq``: optional precomputed (B, 1, M) ||k_M||^2.
    """
    norm = math.sqrt(mem_key.shape[1])
    q_t = query_key.transpose(1, 2)
    if similarity == "dot":
        return torch.bmm(q_t, mem_key) / norm
    if similarity == "l2":
        if mem_sq is None:
            mem_sq = mem_key.pow(2).sum(1, keepdim=True)
        return torch.baddbmm(mem_sq, q_t, mem_key, beta=-1.0 / norm, alpha=2.0 / norm)
    raise ValueError(f"unknown similarity {similarity!r}")


def grid_coordinates(height: int, width: int, device: torch.device | None = None) -> Tensor:
    """(h*w, 2) float (y, x) cell coordinates of a row-major grid."""
    ys, xs = torch.meshgrid(
        torch.arange(height, device=device, dtype=torch.float32),
        torch.arange(width, device=device, dtype=torch.float32),
        indexing="ij",
    )
    return torch.stack([ys.reshape(-1), xs.reshape(-1)], dim=1)


def kmn_kernel(
    best_query: Tensor, query_hw: tuple[int, int], sigma: float, query_slice: slice | None = None
) -> Tensor:
    """Gaussian g[i, j] on the query grid centred at each memory position's best query match.

    Args:
        best_query: (B, M) index in [0, Q) of argmax_j A[i, j] for every memory position i.
        query_hw: (h, w) of the query grid, Q = h * w.
        sigma: standard deviation in grid cells.
        query_slice: only these query positions j (default all).
    Returns:
        (B, M, Qs) = exp(-((y_j - y_q(i))^2 + (x_j - x_q(i))^2) / (2 sigma^2)).
    """
    coords = grid_coordinates(*query_hw, device=best_query.device)  # (Q, 2)
    centre = coords[best_query]  # (B, M, 2)
    cj = coords if query_slice is None else coords[query_slice]
    d2 = (centre[..., 0:1] - cj[:, 0]) ** 2 + (centre[..., 1:2] - cj[:, 1]) ** 2
    return torch.exp(-d2 / (2.0 * sigma * sigma))


def read_weights(
    aff: Tensor,
    kind: ReadKind = "stm",
    *,
    kernel: Tensor | None = None,
    top_k: int | None = None,
    dim: int = 1,
) -> Tensor:
    """Read weights from an affinity, normalised over memory positions (dimension ``dim``).

    Args:
        aff: (B, M, Q) affinity (or (B, Q, M) with ``dim=2``).
        kind: "stm" — softmax over M. "kmn" — softmax over M times ``kernel`` (same shape), renormalised.
        top_k: keep only the k largest affinities per query position before normalising.
    Returns:
        weights of ``aff``'s shape summing to 1 over M.
    """
    if not (aff.dtype == torch.bfloat16 and kind == "stm"):
        # bf16 STM weights come straight from a bf16 softmax (computed in float32 inside, rounded once
        # at the end, the same as float32 softmax then rounding); everything else runs in float32.
        aff = aff.float()
    if top_k is not None and top_k < aff.shape[dim]:
        values, indices = aff.topk(top_k, dim=dim)
        masked = torch.full_like(aff, float("-inf"))
        aff = masked.scatter_(dim, indices, values)
    w = torch.softmax(aff, dim=dim)
    if kind == "kmn":
        if kernel is None:
            raise ValueError("kmn read needs a kernel")
        w = w * kernel
        w = w / w.sum(dim=dim, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)
    elif kind != "stm":
        raise ValueError(f"unknown memory read {kind!r}")
    return w


@dataclass(frozen=True)
class MemoryReader:
    """Memory read: out[:, :, j] = sum_i w[i, j] v_M[:, :, i], chunked over query positions.

    Attributes:
        kind: "stm" (softmax over all memory positions) or "kmn" (Gaussian kernel around each memory
            position's best query match, Lee et al. 2020).
        sigma: KMN kernel width in feature cells (7 at stride 16 in the paper).
        top_k: optional number of memory positions kept per query position.
        similarity: "dot" or "l2" (a property of the model).
        chunk_elements: affinity elements per chunk of the fast path (bounds peak memory).
        exact: compute in the official STM code's layout and dtype: (B, M, Q) affinity, softmax over
            dim 1, in the keys' dtype, so that float32 results equal the reference bit for bit (a random
            STM amplifies 1e-6 differences to 0.3 in 13 frames). Otherwise (default) query-major chunks
            with a float32 affinity and softmax: the same maths, 2-3x faster on CPU.
        exact_chunk_elements: affinity elements per chunk of the exact path.
        bf16_affinity: on the fast path with bf16 values, compute the affinity GEMM in bf16 too (the STM
            softmax then takes bf16 in and out, accumulating in float32): 2.4x faster GEMMs on
            AVX512-BF16, but affinities of large keys are rounded (steps of 1 at |k|^2 ~ 150). Off by
            default; a model turns it on where its trained keys were checked (MemoryNetwork.bf16_affinity).
    """

    kind: ReadKind = "stm"
    sigma: float = 7.0
    top_k: int | None = None
    similarity: str = "dot"
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS
    exact: bool = False
    exact_chunk_elements: int = EXACT_CHUNK_ELEMENTS
    bf16_affinity: bool = False

    def __post_init__(self) -> None:
        if self.kind not in ("stm", "kmn"):
            raise OptionError(f"unknown memory read {self.kind!r} (choose stm or kmn)")
        if self.sigma <= 0:
            raise OptionError(f"kmn sigma must be > 0, not {self.sigma}")
        if self.top_k is not None and self.top_k < 1:
            raise OptionError(f"top_k must be >= 1, not {self.top_k}")

    def _chunks(self, m: int, q: int, elements: int | None = None) -> list[slice]:
        step = max(1, min(q, (elements or self.chunk_elements) // max(m, 1)))
        return [slice(s, min(s + step, q)) for s in range(0, q, step)]

    def best_query_match(self, mem_key: Tensor, query_key: Tensor) -> Tensor:
        """(B, M) argmax over query positions of the affinity, computed chunk by chunk."""
        b, _, m = mem_key.shape
        best_val = torch.full((b, m), float("-inf"), device=mem_key.device)
        best_idx = torch.zeros((b, m), dtype=torch.long, device=mem_key.device)
        for sl in self._chunks(m, query_key.shape[2]):
            val, idx = affinity(mem_key, query_key[:, :, sl], self.similarity).float().max(dim=2)
            better = val > best_val  # strict: the first maximum wins, like argmax on the whole row
            best_val = torch.where(better, val, best_val)
            best_idx = torch.where(better, idx + sl.start, best_idx)
        return best_idx

    def __call__(
        self, mem_key: Tensor, mem_value: Tensor, query_key: Tensor, query_hw: tuple[int, int]
    ) -> Tensor:
        """Read the memory.

        Args:
            mem_key: (B, Ck, M). B = 1 when the key is shared by all objects.
            mem_value: (N, Cv, M) with N == B, or any N when B == 1.
            query_key: (B, Ck, Q), Q = h * w.
            query_hw: (h, w).
        Returns:
            (N, Cv, Q) read-out.
        """
        n, cv, m = mem_value.shape
        q = query_key.shape[2]
        out = mem_value.new_empty((n, cv, q))
        if self.exact:
            best = self.best_query_match(mem_key, query_key) if self.kind == "kmn" else None
            for sl in self._chunks(m, q, self.exact_chunk_elements):
                aff = affinity(mem_key, query_key[:, :, sl], self.similarity)  # (B, M, Qs)
                kernel = None if best is None else kmn_kernel(best, query_hw, self.sigma, sl)
                w = read_weights(aff, self.kind, kernel=kernel, top_k=self.top_k).to(mem_value.dtype)
                out[:, :, sl] = torch.bmm(mem_value, w) if w.shape[0] == n else torch.matmul(mem_value, w[0])
            return out
        # The affinity in bf16 when the values are bf16 (see ``bf16_affinity``), else float32; the softmax
        # accumulates in float32 (see read_weights); the weighted sum of values runs in the values' dtype.
        adt = torch.bfloat16 if self.bf16_affinity and mem_value.dtype == torch.bfloat16 else torch.float32
        with torch.autocast(mem_key.device.type, enabled=False):
            mem_key, query_key = mem_key.to(adt), query_key.to(adt)
            best = self.best_query_match(mem_key, query_key) if self.kind == "kmn" else None
            mem_sq = mem_key.pow(2).sum(1, keepdim=True) if self.similarity == "l2" else None
            shared = mem_key.shape[0] == 1 and n > 1
            # all objects' values as the rows of one matrix when they share the affinity: one bmm
            values = mem_value.reshape(1, n * cv, m) if shared else mem_value
            for sl in self._chunks(m, q, self.chunk_elements):
                aff = query_affinity(mem_key, query_key[:, :, sl], self.similarity, mem_sq)  # (B, Qs, M)
                kernel = None if best is None else kmn_kernel(best, query_hw, self.sigma, sl).transpose(1, 2)
                w = read_weights(aff, self.kind, kernel=kernel, top_k=self.top_k, dim=2)
                w = w.to(mem_value.dtype)  # (B, Qs, M)
                # (B, Qs, M) @ (B, M, n*Cv) with the values as a transposed view: the GEMM reads both
                # operands along M, 5-15% faster than values @ w^T and the same bits (bf16, 480p)
                read = torch.bmm(w, values.transpose(1, 2))  # (B, Qs, n*Cv)
                out[:, :, sl] = read.transpose(1, 2).reshape(n, cv, -1)
        return out
