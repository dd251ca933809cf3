"""``memvos segment SOURCE --mask MASK --out DIR``: propagate given masks through a video."""

from __future__ import annotations

import argparse
import logging
import time
from contextlib import ExitStack
from pathlib import Path

from memvos.errors import InputError
from memvos.inference.backends import BACKENDS
from memvos.models.registry import DEFAULT_MODEL, MODELS
from memvos.precision import PRECISIONS

logger = logging.getLogger(__name__)


def add_session_arguments(parser: argparse.ArgumentParser) -> None:
    """Model and memory options shared by every command that segments (segment, run-dataset, bench, ui)."""
    g = parser.add_argument_group("model and memory")
    g.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"model name: {', '.join(sorted(MODELS))} (default {DEFAULT_MODEL})",
    )
    g.add_argument("--weights", type=Path, help="weights file (default: the weights shipped with the model)")
    g.add_argument(
        "--memory-read",
        choices=["stm", "kmn"],
        default="stm",
        help="stm: softmax over all memory; kmn: Gaussian-kernelized read (default stm)",
    )
    g.add_argument(
        "--kmn-sigma", type=float, default=7.0, help="KMN kernel width in feature cells (default 7)"
    )
    g.add_argument("--top-k", type=int, default=None, help="read only the top-k memory positions per pixel")
    g.add_argument(
        "--mem-every",
        type=int,
        default=None,
        help="memorise every N-th frame permanently (default: the model's, 5)",
    )
    g.add_argument(
        "--max-memory-frames",
        type=int,
        default=None,
        help="memory capacity in frames; oldest periodic entries are evicted (0 = unbounded; "
        "default: the model's)",
    )
    g.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="fp32 = exact and deterministic; fp32-fast = float32 on a fused copy (the fast path of CPUs "
        "without native bf16); bf16 = fast on CPUs with native bf16, AVX512-BF16 or AMX; fp16 = CUDA "
        "(default auto: bf16 on native-bf16 CPUs, else fp32-fast; fp16 on CUDA)",
    )
    g.add_argument(
        "--compile",
        action="store_true",
        help="compile the query encoder with torch.compile (about 2x faster encoding after a one-off "
        "compilation; falls back to eager where it fails)",
    )
    g.add_argument(
        "--no-flush-denormals",
        dest="flush_denormals",
        action="store_false",
        help="keep IEEE subnormal floats on the CPU (default: flushed to zero on the fast paths, about "
        "1.1x faster at 480p; fp32 never flushes)",
    )
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    g.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="torch, or onnxruntime on the model's exported graphs (float32; pip install "
        "'memvos[onnx]'); auto measures both once per CPU and frame size and keeps the faster "
        "(torch without onnxruntime, on CUDA and for --precision fp32)",
    )
    g.add_argument(
        "--size",
        type=int,
        default=None,
        help="process frames downscaled to at most this shorter side in pixels, masks upsampled back "
        "to the original size (0 = original size; default: the model's: memvos-lite caps the shorter side at "
        "480, stm-r50 keeps the original size; 288 is the real-time setting at 480p)",
    )


def run_settings(args: argparse.Namespace) -> dict:
    """What makes two runs the same run, for the run record beside the masks (memvos.io.records): the
    model, the weights' digest and every option of :func:`add_session_arguments` that changes the masks."""
    from memvos.io.records import sha256_file
    from memvos.models.registry import MODELS, shipped_weights_path

    weights = args.weights
    if weights is None and args.model in MODELS:
        weights = shipped_weights_path(args.model)
    try:
        digest = sha256_file(weights) if weights is not None else None
    except OSError:
        digest = None  # unreadable weights are reported by the model loader
    return {
        "model": args.model,
        "weights_sha256": digest,
        "memory_read": args.memory_read,
        "kmn_sigma": args.kmn_sigma,
        "top_k": args.top_k,
        "mem_every": args.mem_every,
        "max_memory_frames": args.max_memory_frames,
        "precision": args.precision,
        "size": args.size,
        "backend": getattr(args, "backend", "torch"),
    }


def add_overwrite_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace masks of an earlier run with other settings (or unrecorded PNGs) in --out; without "
        "it memvos refuses to mix them with this run's",
    )


def session_options(args: argparse.Namespace) -> dict:
    """The :class:`InferenceSession` keywords of :func:`add_session_arguments` options (but precision,
    compile and the backend): the one translation of the CLI's spellings (``0`` = unbounded / original size,
    absent = the model's default)."""
    kwargs: dict = {}
    if args.max_memory_frames is not None:
        kwargs["max_memory_frames"] = None if args.max_memory_frames == 0 else args.max_memory_frames
    if args.size is not None:
        kwargs["size"] = args.size or None
    kwargs.update(
        memory_read=args.memory_read,
        kmn_sigma=args.kmn_sigma,
        top_k=args.top_k,
        mem_every=args.mem_every,
        device=args.device,
        flush_denormals=None if args.flush_denormals else False,
    )
    return kwargs


def session_from_args(args: argparse.Namespace, model=None, frame_hw: tuple[int, int] | None = None):
    """Build an :class:`InferenceSession` from :func:`add_session_arguments` options.

    ``model``: use this model instead of loading ``args.model`` with ``args.weights`` (torch backend only).
    ``frame_hw``: the video's frame size, at which ``--backend auto`` measures the backends.
    """
    from memvos.inference.backends import choose_backend
    from memvos.inference.session import InferenceSession
    from memvos.models.registry import load_model

    if args.device not in ("auto", "cpu") and not args.device.startswith("cuda"):
        raise InputError(f"unknown device {args.device!r} (use auto, cpu, cuda or cuda:N)")
    given_model = model is not None
    if model is None:
        model = load_model(args.model, args.weights)
    kwargs = session_options(args)
    backend = getattr(args, "backend", "torch")
    precision = args.precision
    if not given_model:
        model, backend, precision = choose_backend(
            backend,
            model,
            model_name=args.model,
            weights=args.weights,
            precision=args.precision,
            device=args.device,
            frame_hw=frame_hw,
            session_kwargs=kwargs,
        )
    return InferenceSession(model, precision=precision, compile=args.compile and backend == "torch", **kwargs)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "segment",
        help="segment the objects of a video given their mask on one or more frames",
        description="Propagate object masks through a video. SOURCE: a folder of frames (jpg/png, natural "
        "order) or a video file (mp4/avi/webm/mkv). MASK: one PNG (first frame) or a folder of PNGs named "
        "like the frames (sparse: each gives the objects present on that frame). Palette PNGs (pixel = id) "
        "and 0/255 grayscale (-> id 1) are accepted. Writes DIR/<frame>.png for every frame.",
    )
    p.add_argument("source", type=Path, help="folder of frames or video file")
    p.add_argument(
        "--mask", type=Path, required=True, help="mask PNG for the first frame, or folder of masks"
    )
    p.add_argument("--out", type=Path, required=True, help="output folder for palette PNG masks")
    p.add_argument("--overlay", type=Path, help="also write an overlay video (.mp4, .mkv, .mov or .avi)")
    add_overwrite_argument(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_session_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from memvos.inference.video import propagate_video
    from memvos.io.frames import open_frames
    from memvos.io.masks import open_masks
    from memvos.io.overlay import OverlayWriter, check_video_path
    from memvos.io.paths import check_outputs, prepare_output_file, resolved
    from memvos.io.records import claim_output_folder, complete_record
    from memvos.io.writers import MaskWriter

    check_outputs(reads=[args.source, args.mask, args.weights], out_dirs=[args.out], out_files=[args.overlay])
    if args.overlay is not None:
        check_video_path(args.overlay)
        prepare_output_file(args.overlay)
    frames = open_frames(args.source)
    masks = open_masks(args.mask, frames.names, (frames.height, frames.width))
    session = session_from_args(args, frame_hw=(frames.height, frames.width))
    settings = {"command": "segment", "source": str(resolved(args.source)), "mask": str(resolved(args.mask))}
    claim_output_folder(args.out, {**settings, **run_settings(args)}, overwrite=args.overwrite)
    logger.info(
        "%s: %d frames %dx%d, model %s (%s, %s, %s), masks on %d frame(s)",
        args.source,
        len(frames),
        frames.width,
        frames.height,
        args.model,
        session.backend,
        session.precision,
        session.device,
        len(masks),
    )
    written = 0
    start = time.perf_counter()
    progress = not args.quiet
    with ExitStack() as stack:
        writer = stack.enter_context(MaskWriter(args.out))
        overlay = None
        if args.overlay:
            overlay = stack.enter_context(OverlayWriter(args.overlay, fps=frames.fps))
        for stem, rgb, result in propagate_video(session, frames, masks, progress=progress):
            too_big = [i for i in result.object_ids if i >= 255]
            if too_big:  # checked here, on the first frame that has them, rather than by the writer thread
                raise InputError(
                    f"object id {too_big[0]} in the masks {args.mask} does not fit in the "
                    "output palette PNGs (ids 1-254; 255 is void); renumber the objects"
                )
            writer.submit(stem, result.labels)
            if overlay is not None:
                overlay.write(rgb, result.labels)
            written += 1
    complete_record(args.out)
    elapsed = time.perf_counter() - start
    logger.info(
        "wrote %d masks to %s in %.1f s (%.1f fps)%s",
        written,
        args.out,
        elapsed,
        written / max(elapsed, 1e-9),
        f", overlay {args.overlay}" if args.overlay else "",
    )
    return 0
