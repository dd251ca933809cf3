"""Streaming inference session: feed frames one at a time, give masks on any frame, get masks back.

Example::

    session = InferenceSession(load_model(), device="cpu")
    for i, frame in enumerate(frames):                # (H, W, 3) uint8 RGB
        result = session.step(frame, mask=masks.get(i))  # mask: (H, W) int ids, or None
        save(result.labels)                           # (H, W) int ids
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from memvos.denormals import flushed_denormals
from memvos.errors import InputError, OptionError
from memvos.inference.aggregation import labels_from_chunks, labels_from_probs, others_of, soft_aggregate
from memvos.inference.objects import ObjectManager
from memvos.inference.padding import pad_to_multiple, unpad
from memvos.io.masks import VOID_ID
from memvos.memory.bank import MemoryBank, MemoryEntry
from memvos.memory.policy import EntryKind, MemoryPolicy
from memvos.memory.read import MemoryReader, ReadKind
from memvos.models.base import MemoryNetwork, QueryEncoding
from memvos.precision import Precision, autocast, autocast_dtype, describe_cpu, resolve_precision

if TYPE_CHECKING:
    from memvos.timing import StageTimer

logger = logging.getLogger(__name__)

_DEFAULT = object()
_NO_TIMER = contextlib.nullcontext()  # reusable no-op stage context when no timer is attached


def resolve_device(device: str) -> torch.device:
    """ "auto" -> cuda if available else cpu; "cuda" without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but no CUDA GPU is available (use --device cpu)")
    return torch.device(device)


#: Float32 elements of the full-resolution probabilities upsampled at once when labels are computed from
#: downscaled processing (channel chunks of 32 MiB): a 44-object 1080p frame would otherwise hold 45
#: full-size channels (373 MB) only to take their argmax.
LABEL_CHUNK_ELEMENTS = 1 << 23


class StepResult:
    """Output of one :meth:`InferenceSession.step`.

    Attributes:
        index: frame index in the session (0-based).
        labels: (H, W) int32 object ids (0 = background).
        probs: (N + 1, H, W) float32 probabilities on the CPU, channel 0 background, then ``object_ids`` in
            order. When the frame was processed downscaled and is not in one chunk, they are upsampled
            when first read (the labels never need them all at once).
        object_ids: ids of the probability channels 1..N.
    """

    def __init__(
        self,
        index: int,
        labels: np.ndarray,
        probs: Tensor | None,
        object_ids: list[int],
        *,
        low_res_probs: Tensor | None = None,
        size: tuple[int, int] | None = None,
    ) -> None:
        """``probs``, or ``low_res_probs`` (N + 1, h', w') at the processing size with the output ``size``."""
        if probs is None and (low_res_probs is None or size is None):
            raise ValueError("StepResult needs probs, or low_res_probs and size")
        self.index = index
        self.labels = labels
        self.object_ids = object_ids
        self._probs = probs
        self._low_res_probs = low_res_probs
        self._size = size

    @property
    def probs(self) -> Tensor:
        if self._probs is None:
            self._probs = resize_probs(self._low_res_probs, self._size).cpu()
            self._low_res_probs = None
        return self._probs

    def __repr__(self) -> str:
        h, w = self.labels.shape
        return f"StepResult(index={self.index}, labels={w}x{h}, object_ids={self.object_ids})"


@dataclass
class _Pending:
    """A segmented frame waiting to be encoded into memory (done lazily at the next step)."""

    index: int
    kind: EntryKind
    image: Tensor  # (1, 3, Hp, Wp)
    query: QueryEncoding | None
    probs: Tensor  # (N, H', W') object probabilities at processing resolution (unpadded)
    object_ids: tuple[int, ...]


class InferenceSession:
    """Semi-supervised VOS over a stream of frames with a space-time memory.

    Args:
        model: a :class:`MemoryNetwork` (weights loaded, any device).
        memory_read: "stm" (softmax over all memory) or "kmn" (Gaussian-kernelized read).
        kmn_sigma: KMN kernel width in feature cells.
        top_k: keep only the top-k memory positions per query position (None: all).
        mem_every: every N-th frame becomes a permanent memory entry (default: the model's, 5 for STM).
        max_memory_frames: memory capacity in frames (default: the model's); None = unbounded.
        precision: "fp32" (exact, deterministic), "fp32-fast" (float32 on a fused private copy: the fast
            path of CPUs without native bf16), "bf16" (autocast + channels_last; fast on CPUs with native
            bf16), "fp16" (CUDA autocast) or "auto" (see :mod:`memvos.precision`).
        device: "cpu", "cuda", "cuda:N" or "auto".
        size: process frames downscaled so that their shorter side is at most ``size`` pixels (smaller
            frames are not upscaled; None or 0: original size; default: the model's ``default_size``).
            Probabilities are upsampled back (bilinear) to the original size before the argmax; user-given
            masks stay exact at the original size.
        timer: optional :class:`memvos.timing.StageTimer` that records the time spent in the "encode",
            "memory_read", "decode_head" and "memorise" stages (None: no timing, no overhead). Also
            settable later as ``session.timer``.
        compile: compile the query encoder with ``torch.compile`` (inductor, frozen weights) on its first
            call: ~2x faster encoding after a one-off compilation of seconds to a minute (cached on disk
            by inductor across runs). Falls back to eager, with a warning, where compilation fails.
        flush_denormals: run each step's CPU kernels with subnormal floats flushed to zero (FTZ/DAZ, on the
            stepping thread and its torch OpenMP threads, restored after the step; see
            :mod:`memvos.denormals`; BENCHMARKS.md "Release 0.2.1"). Default: on for the fast
            (fp32-fast/bf16/fp16) CPU paths, off for fp32, which stays bit-exact to the reference.
    """

    def __init__(
        self,
        model: MemoryNetwork,
        *,
        memory_read: ReadKind = "stm",
        kmn_sigma: float = 7.0,
        top_k: int | None = None,
        mem_every: int | None = None,
        max_memory_frames: int | None | object = _DEFAULT,
        precision: Precision = "auto",
        device: str = "cpu",
        size: int | None | object = _DEFAULT,
        timer: StageTimer | None = None,
        compile: bool = False,
        flush_denormals: bool | None = None,
    ) -> None:
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.exact = self.precision == "fp32"
        self.backend = model.backend  # "torch", or "onnxruntime" for exported graphs
        if self.device.type == "cpu":
            logger.debug("precision %s (asked: %s) on a %s CPU", self.precision, precision, describe_cpu())
        if flush_denormals is None:
            flush_denormals = self.device.type == "cpu" and not self.exact
        self.flush_denormals = flush_denormals
        self.model = model.to(self.device).eval()
        #: channels_last activations on every fast path (fp32-fast too: 1.4-1.6x faster steps, BENCHMARKS.md
        #: "Precisions per CPU"); the exact path keeps the caller's contiguous layout.
        self.channels_last = not self.exact
        if not self.exact:
            # A private copy with BatchNorms folded into convs (2x faster encoders in bf16); fp32 stays
            # the caller's model, exact like the reference.
            # Weights are stored in the autocast dtype: autocast would otherwise re-cast every weight on
            # every call (~160 copies per frame for memvos-lite). Same numbers: autocast rounds them alike.
            # Only conv/linear weights: norm layers and buffers (e.g. input mean/std) stay float32, as
            # autocast leaves them.
            self.model = copy.deepcopy(self.model).fuse_for_inference_()
            if self.channels_last:
                self.model = self.model.to(memory_format=torch.channels_last)
            weight_dtype = autocast_dtype(self.precision)
            if weight_dtype is not None:
                for module in self.model.modules():
                    if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                        for param in module.parameters(recurse=False):
                            param.data = param.data.to(weight_dtype)
        self.reader = MemoryReader(
            kind=memory_read,
            sigma=kmn_sigma,
            top_k=top_k,
            similarity=model.similarity,
            exact=self.exact,
            bf16_affinity=model.bf16_affinity,
        )
        policy = MemoryPolicy(
            mem_every=model.default_mem_every if mem_every is None else mem_every,
            max_frames=model.default_max_memory_frames
            if max_memory_frames is _DEFAULT
            else max_memory_frames,
        )
        self.memory = MemoryBank(policy, shared_key=model.shared_key)
        self.objects = ObjectManager()
        if size is not _DEFAULT and size is not None and int(size) < 0:
            raise OptionError(f"size must be >= 0 (0: original size), not {size}")
        self.size = model.default_size if size is _DEFAULT else (size or None)
        self.timer = timer
        self.index = 0
        self._first_annotated: int | None = None
        self._pending: _Pending | None = None
        self._frame_hw: tuple[int, int] | None = None
        self._compiled_encoder = None
        self.compile = compile

    # ------------------------------------------------------------------ public API
    @property
    def object_ids(self) -> list[int]:
        return self.objects.ids

    @property
    def policy(self) -> MemoryPolicy:
        return self.memory.policy

    def reset(self) -> None:
        """Forget all frames, objects and memory (same model and settings)."""
        self.memory.clear()
        self.objects = ObjectManager()
        self.index = 0
        self._first_annotated = None
        self._pending = None
        self._frame_hw = None

    @torch.inference_mode()
    def remove_object(self, object_id: int) -> None:
        """Stop tracking an object and drop it from memory."""
        with self._float_mode(), self._autocast():
            self._flush_pending()
        self.objects.remove(object_id)
        self.memory.remove_object(object_id)

    def step(
        self, image: np.ndarray | Tensor, mask: np.ndarray | None = None, objects: Iterable[int] | None = None
    ) -> StepResult:
        """Segment the next frame.

        Args:
            image: (H, W, 3) uint8 RGB array, or a (3, H, W) float tensor in [0, 1].
            mask: optional (H, W) int array of object ids given by the user for this frame (255 is void:
                read as background).
            objects: ids the mask speaks for (default: the non-zero ids in ``mask``). An id listed here
                but absent from ``mask`` is absent on this frame; tracked objects not listed keep their
                prediction outside the given objects' pixels. New ids start being tracked here.
        Returns:
            :class:`StepResult` for this frame.
        """
        with self._float_mode():
            return self._step(image, mask, objects)

    @torch.inference_mode()
    def _step(
        self, image: np.ndarray | Tensor, mask: np.ndarray | None, objects: Iterable[int] | None
    ) -> StepResult:
        """:meth:`step` in the session's float mode."""
        frame = self._to_tensor(image)
        h, w = frame.shape[-2:]
        if self._frame_hw is None:
            self._frame_hw = (h, w)
        elif self._frame_hw != (h, w):
            raise InputError(
                f"frame {self.index} is {w}x{h} but earlier frames are "
                f"{self._frame_hw[1]}x{self._frame_hw[0]}"
            )
        given_ids: list[int] = []
        if mask is not None:
            mask = np.asarray(mask)
            if mask.shape != (h, w):
                raise InputError(
                    f"mask for frame {self.index} is {mask.shape[1]}x{mask.shape[0]}, frame is {w}x{h}"
                )
            if (mask == VOID_ID).any():  # DAVIS void: background, never an object (memvos.io.masks)
                mask = np.where(mask == VOID_ID, 0, mask)
            if objects is not None and VOID_ID in {int(o) for o in objects}:
                raise InputError(f"object id {VOID_ID} is the DAVIS void label and cannot be tracked")
            present = [int(v) for v in np.unique(mask) if v != 0]
            given_ids = present if objects is None else sorted({int(o) for o in objects})
            stray = set(present) - set(given_ids)
            if stray:
                raise InputError(f"mask for frame {self.index} has ids {sorted(stray)} not listed in objects")

        with self._autocast():
            self._flush_pending()
            proc = self._resize(frame)
            padded, pad = pad_to_multiple(proc, self.model.stride)
            if self.channels_last:
                padded = padded.contiguous(memory_format=torch.channels_last)
            to_predict = [o for o in self.objects.ids if o not in given_ids]
            query = None
            predicted = None
            if to_predict:
                with self._time("encode"):
                    query = self._encode_query(padded)
                with self._time("memory_read"):
                    readout = self.memory.read(self.reader, query.key, to_predict)
                with self._time("decode_head"):
                    predicted = unpad(self.model.decode(query, readout).float(), pad)  # (n, h', w')

        new_ids = [o for o in given_ids if o not in self.objects and (mask == o).any()]
        self.objects.add(new_ids)
        ids = self.objects.ids
        proc_hw = proc.shape[-2:]
        obj_probs = torch.zeros((len(ids), *proc_hw), device=self.device)
        background = None  # soft-aggregated background, kept exact when nothing is overridden
        if predicted is not None:
            agg = soft_aggregate(predicted)  # (n+1, h', w')
            background = agg[0:1]
            for row, oid in enumerate(to_predict):
                obj_probs[ids.index(oid)] = agg[row + 1]
        annotated = mask is not None and bool(given_ids) and bool(ids)
        if annotated:
            given = torch.from_numpy(mask.astype(np.int64)).to(self.device)
            given_onehot = torch.stack([given == o for o in ids]).float()  # (N, H, W)
            given_onehot = resize_probs(given_onehot, proc_hw)
            given_any = given_onehot.sum(0).clamp(max=1)
            listed = torch.tensor([o in given_ids for o in ids], device=self.device)
            # Listed objects take the user's mask; unlisted ones keep their prediction where the user
            # labelled nothing.
            obj_probs = torch.where(listed[:, None, None], given_onehot, obj_probs * (1 - given_any))
            if self._first_annotated is None:
                self._first_annotated = self.index

        if ids and self._first_annotated is not None:
            kind = self.policy.kind_for(self.index, self._first_annotated, annotated)
            if kind is not None:
                self._pending = _Pending(self.index, kind, padded, query, obj_probs, tuple(ids))

        if background is None or annotated:
            background = (1 - obj_probs.sum(0, keepdim=True)).clamp(min=0)
        low = torch.cat([background, obj_probs], dim=0)  # (N + 1, h', w')
        chunk = max(1, LABEL_CHUNK_ELEMENTS // (h * w))
        if annotated or tuple(proc_hw) == (h, w) or chunk >= len(low):
            probs = resize_probs(low, (h, w))
            if annotated:  # given pixels are exact at full resolution whatever the processing size
                probs = self._apply_given(probs, mask, ids, given_ids)
            labels = labels_from_probs(probs, ids).cpu().numpy()
            result = StepResult(self.index, labels, probs.cpu(), ids)
        else:  # many objects, downscaled: full-size probabilities one channel chunk at a time
            chunks = (resize_probs(low[s : s + chunk], (h, w)) for s in range(0, len(low), chunk))
            labels = labels_from_chunks(chunks, ids).cpu().numpy()
            result = StepResult(self.index, labels, None, ids, low_res_probs=low, size=(h, w))
        self.index += 1
        return result

    def propagate(
        self, frames: Iterable[np.ndarray], masks: dict[int, np.ndarray] | None = None
    ) -> Iterator[StepResult]:
        """Step through ``frames`` (SAM 2's ``propagate_in_video`` shape); ``masks`` maps index -> mask."""
        masks = masks or {}
        for frame in frames:
            yield self.step(frame, masks.get(self.index))

    # ------------------------------------------------------------------ internals
    def _encode_query(self, padded: Tensor) -> QueryEncoding:
        """The query encoder, compiled on first use when asked (see ``compile``)."""
        if not self.compile:
            return self.model.encode_query(padded)
        if self._compiled_encoder is None:
            import torch._inductor.config as inductor_config

            inductor_config.freezing = True  # weights as constants: conv + BN/ReLU folding, no recasts
            self._compiled_encoder = torch.compile(self.model.encode_query, dynamic=False)
        try:
            return self._compiled_encoder(padded)
        except Exception as exc:  # noqa: BLE001 - any compiler failure: fall back to eager for good
            logger.warning(
                "torch.compile failed (%s: %s); running the encoder eagerly",
                type(exc).__name__,
                str(exc).splitlines()[0] if str(exc) else "",
            )
            self.compile = False
            return self.model.encode_query(padded)

    def _float_mode(self) -> contextlib.AbstractContextManager:
        """The CPU float mode of this session's work, on the thread that runs it (see ``flush_denormals``)."""
        return flushed_denormals(self.flush_denormals and self.device.type == "cpu")

    def _time(self, stage: str) -> contextlib.AbstractContextManager:
        """Context timing ``stage`` with the attached timer; a shared no-op without one."""
        return _NO_TIMER if self.timer is None else self.timer.stage(stage)

    def _autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.precision, self.device)

    def _to_tensor(self, image: np.ndarray | Tensor) -> Tensor:
        if isinstance(image, Tensor):
            if image.ndim != 3 or image.shape[0] != 3:
                raise InputError(f"image tensor must be (3, H, W), got {tuple(image.shape)}")
            return image.to(self.device, torch.float32).unsqueeze(0)
        arr = np.asarray(image)
        if arr.ndim != 3 or arr.shape[2] != 3:
            raise InputError(f"frame {self.index} must be an (H, W, 3) RGB image, got shape {arr.shape}")
        t = torch.from_numpy(arr if arr.flags.writeable and arr.flags.c_contiguous else arr.copy()).to(
            self.device
        )
        t = t.permute(2, 0, 1).unsqueeze(0)
        # uint8 stays uint8 (made float by _resize); other dtypes are 0..255 values as before
        return t if t.dtype == torch.uint8 else t.float().div_(255.0)

    def _processing_hw(self, h: int, w: int) -> tuple[int, int]:
        return processing_hw(h, w, self.size)

    def _resize(self, frame: Tensor) -> Tensor:
        """(1, 3, H, W) uint8 or float in [0, 1] -> float (1, 3, h', w') at the processing size.

        uint8 frames are resized before conversion (torch's uint8 antialiased kernel: ~4x less work than
        on floats, results within 1/255 of it).
        """
        h, w = frame.shape[-2:]
        ph, pw = self._processing_hw(h, w)
        if (ph, pw) != (h, w):
            frame = F.interpolate(frame, size=(ph, pw), mode="bilinear", align_corners=False, antialias=True)
        return frame.float().div_(255.0) if frame.dtype == torch.uint8 else frame

    def _apply_given(self, probs: Tensor, mask: np.ndarray, ids: list[int], given_ids: list[int]) -> Tensor:
        given = torch.from_numpy(mask.astype(np.int64)).to(probs.device)
        for oid in given_ids:
            if oid not in ids:
                continue
            ch = ids.index(oid) + 1
            probs[ch] = (given == oid).float()
        labelled = given > 0
        unlisted = [ids.index(o) + 1 for o in ids if o not in given_ids]
        for ch in unlisted:
            probs[ch] = torch.where(labelled, torch.zeros_like(probs[ch]), probs[ch])
        probs[0] = (1 - probs[1:].sum(0)).clamp(min=0)
        return probs

    def _flush_pending(self) -> None:
        """Encode the last segmented frame into memory (STM memorises frame t-1 before reading for t)."""
        p = self._pending
        if p is None:
            return
        self._pending = None
        with self._time("memorise"):
            masks, _ = pad_to_multiple(p.probs, self.model.stride)
            others = others_of(masks)
            key, value = self.model.encode_memory(p.image, p.query, masks, others)
        self.memory.add(MemoryEntry(p.index, p.kind, key, value, p.object_ids))


def processing_hw(h: int, w: int, size: int | None) -> tuple[int, int]:
    """The size a frame of ``h`` x ``w`` is processed at: shorter side at most ``size`` (None: original)."""
    if size is None or min(h, w) <= size:  # downscale only: small videos stay as they are
        return h, w
    scale = size / min(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def resize_probs(probs: Tensor, hw: tuple[int, int]) -> Tensor:
    """(C, h', w') -> (C, H, W) bilinear (each channel on its own: a chunk of channels resizes alike)."""
    if tuple(probs.shape[-2:]) == tuple(hw):
        return probs
    return F.interpolate(probs[None], size=hw, mode="bilinear", align_corners=False)[0]
