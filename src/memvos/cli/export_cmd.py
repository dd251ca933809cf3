"""``memvos export``: a model's per-frame graphs as ONNX files with a manifest, checked against torch."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def _opset(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``export`` sub-command."""
    from memvos.export import DEFAULT_OPSET, DEFAULT_TOLERANCE, INSTALL_HINT
    from memvos.models.registry import DEFAULT_MODEL, MODELS

    p = sub.add_parser(
        "export",
        help="export the model's per-frame graphs to ONNX (with a manifest)",
        description=(
            "Write the per-frame graphs of a model (query_encoder.onnx, value_encoder.onnx, decoder.onnx: "
            "float32, dynamic frame size and object count) and manifest.json (model, weights sha256, "
            "inputs/outputs with shapes, normalisation, the check) to --out. The memory read between the "
            "graphs stays in memvos. Each graph is run with onnxruntime at two frame sizes and two object "
            f"counts and compared with torch before anything is written. Needs: {INSTALL_HINT}"
        ),
    )
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"model name: {', '.join(sorted(MODELS))} (default {DEFAULT_MODEL})",
    )
    p.add_argument("--weights", type=Path, help="weights file (default: the weights shipped with the model)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder to write the export to")
    p.add_argument(
        "--opset", type=_opset, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})"
    )
    p.add_argument(
        "--no-check",
        dest="check",
        action="store_false",
        help="do not compare the graphs with torch (onnxruntime) on export",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        help="largest error accepted by the check, relative to max(1, |torch output|) "
        f"(default {DEFAULT_TOLERANCE:g})",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an export already in --out")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Export, print the manifest's path."""
    from memvos.export import export_model

    manifest = export_model(
        args.model,
        args.weights,
        args.out,
        opset=args.opset,
        check=args.check,
        tolerance=args.tolerance,
        overwrite=args.overwrite,
    )
    print(manifest)
    return 0
