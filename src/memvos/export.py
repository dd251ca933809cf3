"""Export a model's per-frame graphs to ONNX, with a manifest, checked against torch on export.

A memory network runs three graphs per frame (see :class:`memvos.models.base.MemoryNetwork`):

* ``query_encoder``: ``image`` (1, 3, H, W) -> the query ``key`` and the model's per-frame features (the
  :class:`~memvos.models.base.QueryEncoding`, one named output per tensor);
* ``value_encoder``: the frame's soft ``masks`` and ``others`` (N, H, W) with what the model needs of the
  frame (its features, or the image itself) -> ``mem_value`` (N, Cv, H/16, W/16), and ``mem_key`` for models
  whose memory key is not the query key;
* ``decoder``: the query features and the memory ``readout`` (N, Cv, H/16, W/16) -> ``probs`` (N, H, W).

The memory read between them (the softmax over memory) is not a per-frame graph: it stays in memvos
(:mod:`memvos.memory.read`). Each graph is the caller's float32 model (the exact path) traced with the
TorchScript-based exporter, with dynamic frame size and object count. H and W must be multiples of the
model's stride (frames are zero-padded to it, :mod:`memvos.inference.padding`).

:func:`export_model` writes ``query_encoder.onnx``, ``value_encoder.onnx``, ``decoder.onnx`` and
``manifest.json`` (see docs/export.md); :class:`OnnxModel` runs an exported folder with onnxruntime behind
the :class:`~memvos.models.base.MemoryNetwork` interface, so that :class:`memvos.inference.session.
InferenceSession` drives it like the torch model.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib
import io
import json
import logging
import math
import types
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from memvos.errors import MemvosError, OptionError
from memvos.io.records import sha256_file
from memvos.models.base import MemoryNetwork, QueryEncoding

logger = logging.getLogger(__name__)

FORMAT = "memvos-onnx"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
GRAPHS = ("query_encoder", "value_encoder", "decoder")
#: What to install for export and for running exported graphs.
INSTALL_HINT = "pip install -c constraints.txt 'memvos[onnx]'"
DEFAULT_OPSET = 17
#: The opsets accepted (Resize with scales needs 11; the TorchScript exporter stops at 20 in torch 2.13).
MIN_OPSET = 11
#: Largest error accepted on export, relative to max(1, largest |value| of the torch output).
DEFAULT_TOLERANCE = 1e-3
#: Frame sizes (in multiples of the stride) and object counts of the check; the trace uses others
#: (5 x 7 strides, 2 objects), so the check also proves the graphs generalise. 5 objects catch loops over
#: object batches that a trace would unroll.
CHECK_SIZES = ((4, 6), (6, 8))
CHECK_OBJECTS = (1, 5)
TRACE_SIZE = (5, 7)
TRACE_OBJECTS = 2
#: Names of the graphs' own inputs/outputs; the query encoder's feature names must not take them.
RESERVED = ("image", "masks", "others", "readout", "mem_key", "mem_value", "probs")
#: Where the memory key comes from when the memory encoder reuses the frame's query key.
QUERY_KEY = "query_encoder.key"
_FRAME_INPUTS = ("image", "masks", "others")


# ---------------------------------------------------------------------------------------- dependencies
def _import_optional(name: str, what: str) -> types.ModuleType:
    """Import ``name``; a missing package is one MemvosError line saying what to install."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise MemvosError(
            f"{what} needs the package {name}, which is not installed: {INSTALL_HINT}"
        ) from None


def onnxruntime_or_none() -> types.ModuleType | None:
    """The onnxruntime module, or None when it is not installed."""
    try:
        return importlib.import_module("onnxruntime")
    except ImportError:
        return None


def _ort_session(
    ort: types.ModuleType, model: bytes | str, threads: int | None = None, quiet: bool = False
) -> Any:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    # errors only (no shape-metadata warnings per run); none at all in the check, which reports them itself
    options.log_severity_level = 4 if quiet else 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


# ---------------------------------------------------------------------------------------- models
def normalisation(model: MemoryNetwork) -> dict[str, Any]:
    """How ``model`` normalises its input (inside the graphs): mean/std per RGB channel, when known."""
    from memvos.models.lite import LiteMemoryNetwork
    from memvos.models.stm import STM

    if isinstance(model, LiteMemoryNetwork):
        from memvos.models.backbones.efficientnet_lite import INPUT_MEAN, INPUT_STD

        mean, std = [float(INPUT_MEAN)] * 3, [float(INPUT_STD)] * 3
    elif isinstance(model, STM):
        from memvos.models.stm import IMAGENET_MEAN, IMAGENET_STD

        mean, std = list(IMAGENET_MEAN), list(IMAGENET_STD)
    else:
        mean = std = None
    return {
        "inside_graphs": True,
        "formula": "(image - mean) / std, per RGB channel, inside the graphs that take the image",
        "mean": mean,
        "std": std,
    }


@contextlib.contextmanager
def export_ready(model: nn.Module) -> Iterator[None]:
    """Make ``model`` traceable with dynamic frame size and object count, restored on exit.

    * TF "SAME" convolutions (EfficientNet-Lite) compute their padding from the input size with Python
      arithmetic, which a trace would freeze half-way. On inputs that are multiples of the model's stride,
      every such conv sees a multiple of its own stride, where the padding does not depend on the size: it
      is fixed to that padding.
    * Models that loop over object batches (STM's ``object_batch``) run all objects as one batch, so that
      the trace has no loop unrolled for the traced object count.
    """
    from memvos.models.backbones.efficientnet_lite import Conv2dSame, tf_same_pad

    patched: list[nn.Module] = []
    saved_batch: list[tuple[nn.Module, int]] = []

    def fixed_pad_input(conv: Conv2dSame, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        pt, pb, pl, pr = conv._export_pads
        if pt == pb and pl == pr:
            return x, (pt, pl)
        return F.pad(x, (pl, pr, pt, pb)), (0, 0)

    try:
        for module in model.modules():
            if isinstance(module, Conv2dSame) and not module.static_same:
                (sh, sw), (kh, kw), (dh, dw) = module.stride, module.kernel_size, module.dilation
                module._export_pads = (*tf_same_pad(2 * sh, kh, sh, dh), *tf_same_pad(2 * sw, kw, sw, dw))
                module.pad_input = types.MethodType(fixed_pad_input, module)
                patched.append(module)
            batch = getattr(module, "object_batch", None)
            if isinstance(module, MemoryNetwork) and isinstance(batch, int):
                saved_batch.append((module, batch))
                module.object_batch = 1 << 30
        yield
    finally:
        for module in patched:
            del module.pad_input, module._export_pads
        for module, batch in saved_batch:
            module.object_batch = batch


@dataclass
class _Graph:
    """One per-frame graph: a function of named tensors to named tensors."""

    name: str
    inputs: list[str]
    outputs: list[str]
    fn: Callable[[dict[str, Tensor]], dict[str, Tensor]]


class _GraphModule(nn.Module):
    """A :class:`_Graph` as a module with positional tensor inputs and a tuple of outputs (for the export)."""

    def __init__(self, model: nn.Module, graph: _Graph) -> None:
        super().__init__()
        self.model = model
        self.graph = graph

    def forward(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        out = self.graph.fn(dict(zip(self.graph.inputs, tensors, strict=True)))
        return tuple(out[name] for name in self.graph.outputs)


def _build_graphs(model: MemoryNetwork, stride: int) -> tuple[list[_Graph], bool]:
    """The three graphs of ``model`` on its MemoryNetwork interface, and whether the memory key is the
    query key (then the value encoder has no key output)."""
    with torch.no_grad():
        probe = model.encode_query(torch.zeros(1, 3, 2 * stride, 2 * stride))
        features = list(probe.features)
        clash = [n for n in features if n in RESERVED or n == "key"]
        if clash:
            raise MemvosError(f"{type(model).__name__} has query features named {clash}: reserved in export")
        masks = torch.zeros(1, 2 * stride, 2 * stride)
        key, _ = model.encode_memory(torch.zeros(1, 3, 2 * stride, 2 * stride), probe, masks, masks)
    shared = key is probe.key
    query_names = ["key", *features]

    def encoding(t: dict[str, Tensor]) -> QueryEncoding:
        return QueryEncoding(key=t["key"], features={n: t[n] for n in features})

    def query(t: dict[str, Tensor]) -> dict[str, Tensor]:
        q = model.encode_query(t["image"])
        return {"key": q.key, **q.features}

    def value(t: dict[str, Tensor]) -> dict[str, Tensor]:
        k, v = model.encode_memory(t["image"], encoding(t), t["masks"], t["others"])
        return {"mem_value": v} if shared else {"mem_key": k, "mem_value": v}

    def decode(t: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"probs": model.decode(encoding(t), t["readout"]).float()}

    graphs = [
        _Graph("query_encoder", ["image"], query_names, query),
        _Graph(
            "value_encoder",
            ["image", *query_names, "masks", "others"],
            ["mem_value"] if shared else ["mem_key", "mem_value"],
            value,
        ),
        _Graph("decoder", [*query_names, "readout"], ["probs"], decode),
    ]
    return graphs, shared


# ---------------------------------------------------------------------------------------- example data
Config = tuple[int, int, int]  # (H, W, N)


def _examples(model: MemoryNetwork, graphs: list[_Graph], config: Config, seed: int) -> dict[str, dict]:
    """Inputs and torch outputs of every graph at ``config``, chained as the session chains them."""
    h, w, n = config
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(1, 3, h, w, generator=g)
    probs = torch.softmax(3 * torch.randn(n + 1, h, w, generator=g), dim=0)[1:]
    tensors: dict[str, Tensor] = {
        "image": image,
        "masks": probs,
        "others": (probs.sum(0, keepdim=True) - probs).clamp(0, 1),
    }
    result: dict[str, dict] = {}
    with torch.no_grad():
        for graph in graphs:
            if graph.name == "decoder":
                value = tensors["mem_value"]
                tensors["readout"] = torch.randn(value.shape, generator=g) * value.std().clamp(min=1e-3)
            inputs = {name: tensors[name] for name in graph.inputs}
            outputs = {k: v.float().contiguous() for k, v in graph.fn(dict(inputs)).items()}
            tensors.update(outputs)
            result[graph.name] = {"inputs": inputs, "outputs": outputs}
    return result


def _symbolic(shapes: list[tuple[int, ...]], configs: list[Config], tensor: str) -> list[int | str]:
    """Dims of one tensor seen at ``configs``: constants, "N", "H", "W", "H/16", "W/4", "H*2", ..."""
    dims: list[int | str] = []
    for i in range(len(shapes[0])):
        values = [s[i] for s in shapes]
        if len(set(values)) == 1:
            dims.append(values[0])
            continue
        name = None
        if values == [n for _, _, n in configs]:
            name = "N"
        for axis, pos in (("H", 0), ("W", 1)):
            sizes = [c[pos] for c in configs]
            if name is None and all(v and s % v == 0 for v, s in zip(values, sizes, strict=True)):
                ratios = {s // v for v, s in zip(values, sizes, strict=True)}
                if len(ratios) == 1:
                    r = ratios.pop()
                    name = axis if r == 1 else f"{axis}/{r}"
            if name is None and all(v % s == 0 for v, s in zip(values, sizes, strict=True)):
                ratios = {v // s for v, s in zip(values, sizes, strict=True)}
                if len(ratios) == 1:
                    name = f"{axis}*{ratios.pop()}"
        dims.append(name or f"{tensor}_dim{i}")  # varies in a way not named here
    return dims


# ---------------------------------------------------------------------------------------- export
def _prune_unused_inputs(proto: Any) -> list[str]:
    """Drop graph inputs no node reads (e.g. the image of a value encoder that reuses the query features)."""
    graph = proto.graph
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    keep = [i for i in graph.input if i.name in used]
    dropped = [i.name for i in graph.input if i.name not in used]
    if dropped:
        del graph.input[:]
        graph.input.extend(keep)
    return dropped


def _export_graph(
    model: MemoryNetwork,
    graph: _Graph,
    example: dict[str, Tensor],
    shapes: dict[str, list[int | str]],
    opset: int,
    metadata: dict[str, str],
) -> bytes:
    """ONNX bytes of ``graph`` (unused inputs dropped, ``graph.inputs`` updated to the remaining ones)."""
    onnx = _import_optional("onnx", "memvos export")
    names = graph.inputs + graph.outputs
    axes = {n: {i: d for i, d in enumerate(shapes[n]) if isinstance(d, str)} for n in names}
    buf = io.BytesIO()
    module = _GraphModule(model, graph).eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # TracerWarnings of shape arithmetic (checked below), deprecation
            torch.onnx.export(
                module,
                tuple(example[n] for n in graph.inputs),
                buf,
                dynamo=False,
                opset_version=opset,
                input_names=graph.inputs,
                output_names=graph.outputs,
                dynamic_axes={n: a for n, a in axes.items() if a},
                do_constant_folding=True,
            )
    except ImportError as exc:
        raise MemvosError(
            f"the ONNX export needs a missing package ({exc.name or exc}): {INSTALL_HINT}"
        ) from None
    except Exception as exc:  # noqa: BLE001 - the exporter's failures, one line for the user
        logger.debug("torch.onnx.export of %s failed", graph.name, exc_info=True)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise MemvosError(
            f"torch {torch.__version__} could not export the {graph.name} of {type(model).__name__} to ONNX "
            f"(opset {opset}): {type(exc).__name__}: {first[:160]}"
        ) from None
    proto = onnx.load_from_string(buf.getvalue())
    _prune_unused_inputs(proto)  # the TorchScript exporter drops most itself
    kept = {i.name for i in proto.graph.input}
    graph.inputs = [n for n in graph.inputs if n in kept]
    for key, value in {**metadata, "graph": graph.name}.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = f"memvos {metadata.get('model', '')} {graph.name}"
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def _compare(ort_session: Any, graph: _Graph, example: dict[str, dict]) -> tuple[float, float, float, str]:
    """Run ``graph`` with onnxruntime on ``example``: (max abs error, its torch scale, relative, output)."""
    feed = {n: example["inputs"][n].detach().float().contiguous().numpy() for n in graph.inputs}
    try:
        got = ort_session.run(graph.outputs, feed)
    except Exception as exc:  # noqa: BLE001 - e.g. a shape the trace froze: the graph fails at this size
        detail = " ".join(str(exc).split())
        detail = detail.split("Status Message: ")[-1][:160]
        return math.inf, 1.0, math.inf, f"onnxruntime failed: {detail}"
    worst = (0.0, 1.0, 0.0, graph.outputs[0])
    for name, value in zip(graph.outputs, got, strict=True):
        ref = example["outputs"][name].numpy()
        if tuple(value.shape) != tuple(ref.shape):
            return math.inf, 1.0, math.inf, f"{name} is {tuple(value.shape)}, not {tuple(ref.shape)}"
        err = float(np.max(np.abs(value.astype(np.float64) - ref))) if ref.size else 0.0
        scale = max(1.0, float(np.max(np.abs(ref))) if ref.size else 0.0)
        if err / scale >= worst[2]:
            worst = (err, scale, err / scale, name)
    return worst


def _max_opset() -> int:
    """The newest opset torch's TorchScript-based exporter writes."""
    try:
        constants = importlib.import_module("torch.onnx._constants")
    except ImportError:
        return 20
    return int(getattr(constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", 20))


def _check_options(opset: int, tolerance: float) -> None:
    max_opset = _max_opset()
    if not MIN_OPSET <= int(opset) <= max_opset:
        raise OptionError(f"--opset must be between {MIN_OPSET} and {max_opset}, not {opset}")
    if not tolerance > 0:  # also refuses NaN
        raise OptionError(f"--tolerance must be > 0, not {tolerance}")


def _refuse_existing(manifest_path: Path, overwrite: bool) -> None:
    if manifest_path.exists() and not overwrite:
        raise MemvosError(
            f"{manifest_path.parent} already holds an export ({MANIFEST_NAME}); --overwrite replaces it"
        )


def export_network(
    model: MemoryNetwork,
    out_dir: str | Path,
    *,
    model_name: str,
    weights: dict[str, Any] | None = None,
    opset: int = DEFAULT_OPSET,
    check: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
    overwrite: bool = False,
) -> Path:
    """Export the per-frame graphs of ``model`` (any :class:`MemoryNetwork`) to ``out_dir``.

    The model is exported in float32 on the CPU (a copy when it is on another device or in another dtype)
    and left as it was. See :func:`export_model`.

    Returns:
        the path of ``manifest.json``.
    """
    from memvos import __version__
    from memvos.io.atomic import atomic_write_many

    onnx = _import_optional("onnx", "memvos export")
    _check_options(opset, tolerance)
    out_dir = Path(out_dir)
    manifest_path = out_dir / MANIFEST_NAME
    if out_dir.exists() and not out_dir.is_dir():
        raise MemvosError(f"--out {out_dir} is a file, not a folder")
    _refuse_existing(manifest_path, overwrite)

    ort = None
    if check:
        ort = onnxruntime_or_none()
        if ort is None:
            logger.warning("onnxruntime is not installed: exporting without the check (%s)", INSTALL_HINT)
            check_status = "skipped (onnxruntime not installed)"
    else:
        check_status = "skipped (not asked)"

    was_training = model.training
    tensors = [*model.parameters(), *model.buffers()]
    if any(t.is_floating_point() and t.dtype != torch.float32 or t.device.type != "cpu" for t in tensors):
        model = copy.deepcopy(model).float().cpu()  # the caller's model stays as it is
        was_training = False
    model.eval()
    stride = int(model.stride)
    try:
        graphs, shared = _build_graphs(model, stride)
        trace: Config = (TRACE_SIZE[0] * stride, TRACE_SIZE[1] * stride, TRACE_OBJECTS)
        checks: list[Config] = [(a * stride, b * stride, n) for a, b in CHECK_SIZES for n in CHECK_OBJECTS]
        configs = [trace, *checks]
        # the torch references: the model as the session runs it (outside export_ready)
        examples = {c: _examples(model, graphs, c, seed=i) for i, c in enumerate(configs)}
        shapes: dict[str, dict[str, list[int | str]]] = {}
        for graph in graphs:
            seen = {
                n: [tuple(examples[c][graph.name][kind][n].shape) for c in configs]
                for kind, names in (("inputs", graph.inputs), ("outputs", graph.outputs))
                for n in names
            }
            shapes[graph.name] = {n: _symbolic(s, configs, n) for n, s in seen.items()}
        metadata = {"memvos_version": __version__, "model": model_name, "format": FORMAT}
        blobs: dict[str, bytes] = {}
        with export_ready(model):
            for graph in graphs:
                blobs[graph.name] = _export_graph(
                    model, graph, examples[trace][graph.name]["inputs"], shapes[graph.name], opset, metadata
                )
        results: dict[str, dict[str, Any]] = {}
        if ort is not None:
            for graph in graphs:
                session = _ort_session(ort, blobs[graph.name], quiet=True)
                worst: dict[str, Any] = {"max_abs_error": 0.0, "max_relative_error": 0.0}
                for config in checks:
                    err, scale, rel, output = _compare(session, graph, examples[config][graph.name])
                    h, w, n = config
                    if not rel <= tolerance:
                        what = (
                            output
                            if math.isinf(err)
                            else f"error {err:.3g} on {output} (relative {rel:.3g} > tolerance {tolerance:g})"
                        )
                        raise MemvosError(
                            f"the exported {graph.name} of {model_name} differs from torch at {h}x{w}, "
                            f"{n} objects: {what}"
                        )
                    worst["max_abs_error"] = max(worst["max_abs_error"], err)
                    worst["max_relative_error"] = max(worst["max_relative_error"], rel)
                results[graph.name] = worst
                logger.info(
                    "%s: onnxruntime matches torch (max abs error %.2g)", graph.name, worst["max_abs_error"]
                )
    finally:
        model.train(was_training)

    if ort is not None:
        check_info: dict[str, Any] = {
            "status": "passed",
            "runtime": f"onnxruntime {ort.__version__} (CPUExecutionProvider)",
            "tolerance": tolerance,
            "criterion": "max |onnxruntime - torch| / max(1, max |torch|) <= tolerance, per output",
            "sizes": [[a * stride, b * stride] for a, b in CHECK_SIZES],
            "objects": list(CHECK_OBJECTS),
            "traced_at": {"size": [trace[0], trace[1]], "objects": trace[2]},
            "graphs": results,
        }
    else:
        check_info = {"status": check_status}

    def io_spec(graph: _Graph, names: list[str]) -> list[dict[str, Any]]:
        return [{"name": n, "shape": shapes[graph.name][n], "dtype": "float32"} for n in names]

    files = {g.name: f"{g.name}.onnx" for g in graphs}
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "memvos_version": __version__,
        "torch_version": torch.__version__,
        "onnx_version": onnx.__version__,
        "opset": int(opset),
        "exporter": "torch.onnx.export (TorchScript-based, dynamo=False)",
        "model": model_name,
        "model_class": type(model).__name__,
        "weights": weights or {},
        "stride": stride,
        "input": {
            "image": "RGB, float32 in [0, 1], NCHW (1, 3, H, W)",
            "masks": "float32 (N, H, W) soft probability of each object",
            "others": "float32 (N, H, W) clamp(sum of the other objects' masks, 0, 1)",
            "size": f"H and W multiples of the stride ({stride}): zero-pad frames (memvos.inference.padding)",
            "normalisation": normalisation(model),
        },
        "memory": {
            "key": QUERY_KEY if shared else "value_encoder.mem_key",
            "shared_key": bool(model.shared_key),
            "similarity": model.similarity,
            "default_mem_every": model.default_mem_every,
            "default_max_memory_frames": model.default_max_memory_frames,
            "default_size": model.default_size,
            "read": "not exported: softmax over memory in memvos (memvos.memory.read.MemoryReader)",
        },
        "graphs": {
            g.name: {
                "file": files[g.name],
                "sha256": hashlib.sha256(blobs[g.name]).hexdigest(),
                "inputs": io_spec(g, g.inputs),
                "outputs": io_spec(g, g.outputs),
            }
            for g in graphs
        },
        "check": check_info,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(manifest, indent=2) + "\n"
    items = [(out_dir / files[g.name], (lambda fh, b=blobs[g.name]: fh.write(b))) for g in graphs]
    items.append((manifest_path, lambda fh: fh.write(text.encode("utf-8"))))
    try:
        atomic_write_many(items)
    except OSError as exc:
        raise MemvosError(f"cannot write the export to {out_dir}: {exc.strerror or exc}") from None
    return manifest_path


def export_model(
    model_name: str,
    weights: str | Path | None,
    out_dir: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    check: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
    overwrite: bool = False,
) -> Path:
    """Export registered model ``model_name`` with ``weights`` (None: its shipped weights) to ``out_dir``.

    Writes ``query_encoder.onnx``, ``value_encoder.onnx``, ``decoder.onnx`` and ``manifest.json``, all or
    none (temporary names, then renames). With ``check`` (and onnxruntime installed) every graph is run
    with onnxruntime at two frame sizes and two object counts that the trace did not use and compared with
    torch; without onnxruntime the export goes on with one warning and the manifest says the check was
    skipped.

    Returns:
        the path of ``manifest.json``.
    Raises:
        MemvosError: unknown model, bad weights (WeightsError), ``out_dir`` already holds an export (unless
            ``overwrite``), onnx missing (one line saying what to install), a graph that differs from torch.
    """
    from memvos.models.registry import MODELS, load_model, shipped_weights_path

    _import_optional("onnx", "memvos export")  # before the model loads: fail fast
    _check_options(opset, tolerance)
    manifest_path = Path(out_dir) / MANIFEST_NAME
    _refuse_existing(manifest_path, overwrite)
    model = load_model(model_name, weights)
    path = Path(weights) if weights is not None else shipped_weights_path(model_name)
    info = {
        "file": path.name,
        "sha256": sha256_file(path),
        "shipped": weights is None,
        "description": MODELS[model_name].description,
    }
    return export_network(
        model,
        out_dir,
        model_name=model_name,
        weights=info,
        opset=opset,
        check=check,
        tolerance=tolerance,
        overwrite=overwrite,
    )


# ---------------------------------------------------------------------------------------- running
def read_manifest(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """(folder, manifest) of an export: ``path`` is its folder or its manifest.json."""
    path = Path(path)
    manifest_path = path / MANIFEST_NAME if path.is_dir() else path
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MemvosError(f"no memvos ONNX export at {path} ({MANIFEST_NAME} not found)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MemvosError(f"cannot read {manifest_path}: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise MemvosError(f"{manifest_path} is not a memvos ONNX manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise MemvosError(
            f"{manifest_path} has format version {manifest.get('format_version')}; this memvos reads "
            f"{FORMAT_VERSION}"
        )
    return manifest_path.parent, manifest


class OnnxModel(MemoryNetwork):
    """An exported folder run with onnxruntime behind the :class:`MemoryNetwork` interface.

    ``InferenceSession(OnnxModel(folder), precision="fp32")`` segments with the exported graphs; the memory
    read stays memvos's. Tensors go through numpy on the CPU (float32).

    Args:
        path: the export folder or its manifest.json.
        threads: onnxruntime intra-op threads (default: torch's thread count).
        verify: check each graph file against the sha256 in the manifest.

    Raises:
        MemvosError: onnxruntime missing (one line saying what to install), no or a damaged export.
    """

    def __init__(self, path: str | Path, *, threads: int | None = None, verify: bool = True) -> None:
        super().__init__()
        ort = _import_optional("onnxruntime", "running exported ONNX graphs")
        folder, manifest = read_manifest(path)
        self.manifest = manifest
        self.stride = int(manifest["stride"])
        memory = manifest["memory"]
        self.shared_key = bool(memory["shared_key"])
        self.similarity = memory["similarity"]
        self.default_mem_every = memory["default_mem_every"]
        self.default_max_memory_frames = memory["default_max_memory_frames"]
        self.default_size = memory["default_size"]
        self.bf16_affinity = False
        self.backend = "onnxruntime"
        self._key_from_query = memory["key"] == QUERY_KEY
        self._sessions: dict[str, Any] = {}
        self._inputs: dict[str, list[str]] = {}
        self._outputs: dict[str, list[str]] = {}
        for name in GRAPHS:
            spec = manifest["graphs"][name]
            file = folder / spec["file"]
            if not file.is_file():
                raise MemvosError(f"the export at {folder} lacks {spec['file']}")
            if verify and sha256_file(file) != spec["sha256"]:
                raise MemvosError(f"{file} does not match its sha256 in {MANIFEST_NAME} (damaged?)")
            self._sessions[name] = _ort_session(ort, str(file), threads)
            self._inputs[name] = [i["name"] for i in spec["inputs"]]
            self._outputs[name] = [o["name"] for o in spec["outputs"]]
        self._features = [n for n in self._outputs["query_encoder"] if n != "key"]

    def __deepcopy__(self, memo: dict) -> OnnxModel:
        return self  # onnxruntime sessions are immutable (and cannot be copied)

    def fuse_for_inference_(self) -> OnnxModel:
        return self

    def _run(self, graph: str, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        missing = [n for n in self._inputs[graph] if n not in tensors]
        if missing:
            raise ValueError(f"{graph} needs {missing}")
        feed = {n: tensors[n].detach().float().contiguous().cpu().numpy() for n in self._inputs[graph]}
        device = next(iter(tensors.values())).device
        out = self._sessions[graph].run(self._outputs[graph], feed)
        return {n: torch.from_numpy(v).to(device) for n, v in zip(self._outputs[graph], out, strict=True)}

    def encode_query(self, image: Tensor) -> QueryEncoding:
        out = self._run("query_encoder", {"image": image})
        return QueryEncoding(key=out["key"], features={n: out[n] for n in self._features})

    def encode_memory(
        self, image: Tensor, query: QueryEncoding | None, masks: Tensor, others: Tensor
    ) -> tuple[Tensor, Tensor]:
        needs_query = self._key_from_query or bool(set(self._inputs["value_encoder"]) - set(_FRAME_INPUTS))
        if query is None and needs_query:
            query = self.encode_query(image)
        tensors = {"image": image, "masks": masks, "others": others}
        if query is not None:
            tensors.update({"key": query.key, **query.features})
        out = self._run("value_encoder", tensors)
        key = query.key if self._key_from_query else out["mem_key"]
        return key, out["mem_value"]

    def decode(self, query: QueryEncoding, readout: Tensor) -> Tensor:
        tensors = {"key": query.key, **query.features, "readout": readout}
        return self._run("decoder", tensors)["probs"]
