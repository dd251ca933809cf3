"""The interface every memory network implements, so one inference session drives them all.

Shapes use N = number of objects, K = number of memory keys per frame (1 when the key is shared by all
objects, as in STCN; N when each object has its own key, as in STM), Ck/Cv = key/value channels,
(Hp, Wp) = padded image size, (h, w) = (Hp, Wp) / stride.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from torch import Tensor, nn

Similarity = Literal["dot", "l2"]


@dataclass
class QueryEncoding:
    """What the query encoder computes once per frame.

    Attributes:
        key: (1, Ck, h, w) key matched against memory keys.
        features: model-specific tensors reused by the decoder and, for models that encode each frame
            once, by the memory encoder (e.g. skip connections at /8 and /4, the query value).
    """

    key: Tensor
    features: dict[str, Tensor] = field(default_factory=dict)


class MemoryNetwork(nn.Module):
    """Base class: query encoder, memory encoder, decoder. Memory read lives in :mod:`memvos.memory`."""

    #: Output stride of keys and values; inputs are padded to a multiple of it.
    stride: int = 16
    #: True if one memory key per frame serves all objects (K = 1); False for one key per object.
    shared_key: bool = False
    #: Affinity between keys: "dot" (STM, scaled by 1/sqrt(Ck)) or "l2" (negative squared distance, STCN).
    similarity: Similarity = "dot"
    #: Memory defaults this model was designed/trained for (overridable per session).
    default_mem_every: int = 5
    default_max_memory_frames: int | None = 50
    #: The memory read may compute affinities in bf16 under bf16 precision (``MemoryReader.bf16_affinity``).
    #: Only where the trained weights were checked: masks must agree with the float32-affinity read.
    bf16_affinity: bool = False
    #: What runs the per-frame graphs: "torch", or "onnxruntime" (exported graphs, memvos.export.OnnxModel).
    backend: str = "torch"
    #: Shorter side (pixels) frames are processed at by default; None = the original size.
    default_size: int | None = None

    def fuse_for_inference_(self) -> MemoryNetwork:
        """Fold BatchNorms into convs, in place and irreversibly (eval only; the state dict changes).

        Same outputs up to float rounding; the session applies it to a copy of the model for its fast
        (non-fp32) precisions. Default: nothing to fuse.
        """
        return self.eval()

    def encode_query(self, image: Tensor) -> QueryEncoding:
        """image: (1, 3, Hp, Wp) RGB in [0, 1], already padded. Normalisation happens inside."""
        raise NotImplementedError

    def encode_memory(
        self, image: Tensor, query: QueryEncoding | None, masks: Tensor, others: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Encode one frame with the (soft) masks of N objects into memory.

        Args:
            image: (1, 3, Hp, Wp) in [0, 1], padded.
            query: this frame's :class:`QueryEncoding` if it was computed (models may reuse it).
            masks: (N, Hp, Wp) probability of each object.
            others: (N, Hp, Wp) probability of any *other* object, clamp(sum of the others, 0, 1).
        Returns:
            key (K, Ck, h, w) and value (N, Cv, h, w).
        """
        raise NotImplementedError

    def decode(self, query: QueryEncoding, readout: Tensor) -> Tensor:
        """readout: (N, Cv, h, w) memory read per object -> (N, Hp, Wp) foreground probability."""
        raise NotImplementedError
