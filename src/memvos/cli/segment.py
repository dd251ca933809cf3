"""``memvos segment SOURCE --mask MASK --out DIR``: propagate given masks through a video."""

from __future__ import annotations

import argparse
import logging
import time
from contextlib import ExitStack
from pathlib import Path

from memvos.errors import InputError
from memvos.models.registry import DEFAULT_MODEL, MODELS

logger = logging.getLogger(__name__)


def add_session_arguments(parser: argparse.ArgumentParser) -> None:
    """Model and memory options shared by every command that segments (segment, run-dataset, bench)."""
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
        choices=["auto", "fp32", "bf16", "fp16"],
        default="auto",
        help="fp32 = exact and deterministic; bf16 = fast on CPUs with native bf16, AVX512-BF16 or AMX "
        "(default auto: bf16 there, fp16 on CUDA, else fp32)",
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
        help="keep IEEE subnormal floats on the CPU (default: flushed to zero on the bf16/fp16 path, about "
        "1.1x faster at 480p; fp32 never flushes)",
    )
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    g.add_argument(
        "--size",
        type=int,
        default=None,
        help="process frames downscaled to at most this shorter side in pixels, masks upsampled back "
        "to the original size (0 = original size; default: the model's: memvos-lite caps the shorter side at "
        "480, stm-r50 keeps the original size; 288 is the real-time setting at 480p)",
    )


def session_from_args(args: argparse.Namespace, model=None):
    """Build an :class:`InferenceSession` from :func:`add_session_arguments` options.

    ``model``: use this model instead of loading ``args.model`` with ``args.weights``.
    """
    from memvos.inference.session import InferenceSession
    from memvos.models.registry import load_model

    if args.device not in ("auto", "cpu") and not args.device.startswith("cuda"):
        raise InputError(f"unknown device {args.device!r} (use auto, cpu, cuda or cuda:N)")
    if model is None:
        model = load_model(args.model, args.weights)
    kwargs = {}
    if args.max_memory_frames is not None:
        kwargs["max_memory_frames"] = None if args.max_memory_frames == 0 else args.max_memory_frames
    if args.size is not None:
        kwargs["size"] = args.size or None
    return InferenceSession(
        model,
        memory_read=args.memory_read,
        kmn_sigma=args.kmn_sigma,
        top_k=args.top_k,
        mem_every=args.mem_every,
        precision=args.precision,
        device=args.device,
        compile=args.compile,
        flush_denormals=None if args.flush_denormals else False,
        **kwargs,
    )


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
    p.add_argument("--overlay", type=Path, help="also write an overlay video (mp4)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_session_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from memvos.inference.video import StageTimes, propagate_video
    from memvos.io.frames import open_frames
    from memvos.io.masks import open_masks
    from memvos.io.overlay import OverlayWriter
    from memvos.io.writers import MaskWriter

    frames = open_frames(args.source)
    masks = open_masks(args.mask, frames.names, (frames.height, frames.width))
    session = session_from_args(args)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create output folder {args.out}: {exc.strerror}") from None
    logger.info(
        "%s: %d frames %dx%d, model %s (%s, %s), masks on %d frame(s)",
        args.source,
        len(frames),
        frames.width,
        frames.height,
        args.model,
        session.precision,
        session.device,
        len(masks),
    )
    times = StageTimes()
    start = time.perf_counter()
    progress = not args.quiet
    with ExitStack() as stack:
        writer = stack.enter_context(MaskWriter(args.out))
        overlay = None
        if args.overlay:
            overlay = stack.enter_context(OverlayWriter(args.overlay, fps=frames.fps))
        for stem, rgb, result in propagate_video(session, frames, masks, progress=progress, times=times):
            too_big = [i for i in result.object_ids if i > 255]
            if too_big:  # checked here, on the first frame that has them, rather than by the writer thread
                raise InputError(
                    f"object id {too_big[0]} in the masks {args.mask} does not fit in the "
                    "output palette PNGs (ids 1-255); renumber the objects"
                )
            t0 = time.perf_counter()
            writer.submit(stem, result.labels)
            if overlay is not None:
                overlay.write(rgb, result.labels)
            times.write += time.perf_counter() - t0
    elapsed = time.perf_counter() - start
    logger.info(
        "wrote %d masks to %s in %.1f s (%.1f fps)%s",
        times.frames,
        args.out,
        elapsed,
        times.frames / max(elapsed, 1e-9),
        f", overlay {args.overlay}" if args.overlay else "",
    )
    return 0
