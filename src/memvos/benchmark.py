"""Throughput benchmark of the real pipeline: decode -> ``InferenceSession.step`` -> PNG writing.

Main entry points: :func:`run_benchmark` (time a session over a frame source), :class:`SyntheticVideo`
(moving textured shapes rendered on the fly), :class:`StageTimer` (per-stage timing, attachable to an
:class:`~memvos.inference.session.InferenceSession` as ``timer=``), :func:`machine_info` and
:func:`format_report`.

Stage clocks: the session stages ("encode", "memory_read", "decode_head", "memorise", their total "step"
and "other" = step minus the four) and the main thread's waits ("decode_wait" for the next decoded frame,
"write_wait" in ``MaskWriter.submit``) are wall time per measured frame; "decode" and "write" run in their
own threads, overlapping the main thread (and running ahead of / behind it), and are CPU time of those
threads per frame over all frames, warm-up included.
"""

from __future__ import annotations

import io
import logging
import os
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from memvos import __version__
from memvos.allocator import describe as describe_allocator
from memvos.errors import InputError
from memvos.inference.session import InferenceSession
from memvos.inference.video import propagate_video
from memvos.io.frames import FrameSource, decode_image_bytes
from memvos.io.writers import MaskWriter
from memvos.precision import cpu_capability, cpu_supports_bf16
from memvos.timing import SESSION_STAGES, STAGES, StageTimer

__all__ = [
    "SESSION_STAGES",
    "STAGES",
    "StageTimer",
    "SyntheticVideo",
    "blob_mask",
    "format_report",
    "machine_info",
    "peak_rss_mib",
    "run_benchmark",
]

logger = logging.getLogger(__name__)

_THREAD_CPU_STAGES = ("decode", "write")


# ---------------------------------------------------------------------------------------------- sources
def _texture(rng: np.random.Generator, height: int, width: int, cell: int) -> np.ndarray:
    """(H, W, 3) float32 smooth colour noise (random cells upsampled bicubically) plus fine grain."""
    coarse = rng.uniform(30, 225, size=(height // cell + 2, width // cell + 2, 3)).astype(np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), np.float32)
    return smooth + rng.normal(0, 8, size=smooth.shape).astype(np.float32)


class SyntheticVideo(FrameSource):
    """A synthetic clip of ``objects`` textured shapes moving over a textured background, rendered on the fly.

    Each frame is rendered, JPEG-encoded in memory and decoded again, so that the "decode" stage costs what
    decoding a DAVIS-style JPEG folder costs (only the decode is charged to it; rendering and encoding are
    charged to "synthesis", which is not a pipeline stage). Nothing is held beyond the prefetch queue.
    Attributes besides :class:`FrameSource`'s: ``objects``, ``seed``, ``timer`` (a :class:`StageTimer` or
    None, set by :func:`run_benchmark`).
    """

    def __init__(
        self,
        height: int = 480,
        width: int = 854,
        num_frames: int = 100,
        objects: int = 1,
        *,
        seed: int = 0,
        prefetch: int = 4,
        jpeg_quality: int = 90,
    ) -> None:
        if height < 16 or width < 16:
            raise InputError(f"synthetic frames must be at least 16x16, got {width}x{height}")
        if num_frames < 1:
            raise InputError(f"need at least one frame, got {num_frames}")
        if not 1 <= objects <= 255:
            raise InputError(f"objects must be 1..255, got {objects}")
        names = [f"{i:05d}" for i in range(num_frames)]
        super().__init__(Path("<synthetic>"), names, height, width, fps=24.0, prefetch=prefetch)
        self.objects = objects
        self.seed = seed
        self.jpeg_quality = jpeg_quality
        self.timer: StageTimer | None = None
        rng = np.random.default_rng(seed)
        background = _texture(rng, height, width, cell=max(4, min(height, width) // 12))
        self._background = np.clip(background, 0, 255).astype(np.uint8)
        self._sprites: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (mask, texture, motion params)
        for k in range(objects):
            sh = max(4, int(height * rng.uniform(0.2, 0.35)))
            sw = max(4, int(width * rng.uniform(0.12, 0.22)))
            yy, xx = np.mgrid[0:sh, 0:sw].astype(np.float32)
            if k % 2 == 0:  # ellipse
                shape = ((yy - sh / 2 + 0.5) / (sh / 2)) ** 2 + ((xx - sw / 2 + 0.5) / (sw / 2)) ** 2 <= 1
            else:  # rounded-off rectangle with a notch, so shapes differ
                shape = ~((yy < sh / 3) & (xx > 2 * sw / 3))
            tex = _texture(rng, sh, sw, cell=3) * 0.5 + rng.uniform(0, 255, size=3).astype(np.float32) * 0.5
            stripes = (np.sin(xx * rng.uniform(0.3, 0.8) + yy * rng.uniform(0.1, 0.5)) * 30)[..., None]
            motion = rng.uniform(0, 2 * np.pi, size=4)  # phases; amplitudes and speeds derive from them
            self._sprites.append((shape, np.clip(tex + stripes, 0, 255).astype(np.uint8), motion))

    def render(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Frame ``index`` as (H, W, 3) uint8 RGB and its (H, W) int32 object ids (later objects in front)."""
        h, w = self.height, self.width
        img = self._background.copy()
        labels = np.zeros((h, w), np.int32)
        for oid, (shape, tex, (p1, p2, p3, p4)) in enumerate(self._sprites, start=1):
            sh, sw = shape.shape
            t = index / 24.0
            cy = h / 2 + 0.3 * h * np.sin(0.9 * t + p1) + 0.05 * h * np.sin(3.1 * t + p3)
            cx = w / 2 + 0.35 * w * np.sin(0.7 * t + p2) + 0.05 * w * np.cos(2.3 * t + p4)
            y0, x0 = int(round(cy - sh / 2)), int(round(cx - sw / 2))
            ys, xs = slice(max(0, y0), min(h, y0 + sh)), slice(max(0, x0), min(w, x0 + sw))
            if ys.start >= ys.stop or xs.start >= xs.stop:
                continue
            sub = shape[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
            img[ys, xs][sub] = tex[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0][sub]
            labels[ys, xs][sub] = oid
        return img, labels

    def first_mask(self) -> np.ndarray:
        """(H, W) int32 object ids of frame 0."""
        return self.render(0)[1]

    def _produce(self) -> Iterator[tuple[str, np.ndarray]]:
        for i, name in enumerate(self.names):
            c0 = time.thread_time()
            rgb, _ = self.render(i)
            buf = io.BytesIO()
            Image.fromarray(rgb).save(buf, format="JPEG", quality=self.jpeg_quality)
            c1 = time.thread_time()
            frame = decode_image_bytes(np.frombuffer(buf.getbuffer(), dtype=np.uint8))
            assert frame is not None, "OpenCV could not decode a JPEG written by Pillow"
            c2 = time.thread_time()
            if self.timer is not None:
                self.timer.add("synthesis", c1 - c0)
                self.timer.add("decode", c2 - c1)
            yield name, frame


class _TimedFrames(FrameSource):
    """Wraps a source: at most ``limit`` frames, each decode charged to ``timer`` as "decode" (thread CPU)."""

    def __init__(self, inner: FrameSource, limit: int | None = None) -> None:
        names = inner.names[:limit] if limit else list(inner.names)
        super().__init__(inner.path, names, inner.height, inner.width, inner.fps, inner.prefetch)
        self.inner = inner
        self.timer: StageTimer | None = None

    def _produce(self) -> Iterator[tuple[str, np.ndarray]]:
        gen = self.inner._produce()  # the subclass hook FrameSource.__iter__ drives in its decoder thread
        try:
            for _ in range(len(self.names)):
                c0 = time.thread_time()
                try:
                    item = next(gen)
                except StopIteration:
                    return
                if self.timer is not None:
                    self.timer.add("decode", time.thread_time() - c0)
                yield item
        finally:
            gen.close()


class _TimedMaskWriter(MaskWriter):
    """A :class:`MaskWriter` that charges the CPU time of its writer thread to ``timer`` as "write"."""

    def __init__(self, out_dir: str | Path, timer: StageTimer) -> None:
        self.timer = timer  # set before the thread starts in MaskWriter.__init__
        super().__init__(out_dir)

    def _run(self) -> None:
        c0 = time.thread_time()
        try:
            super()._run()
        finally:
            self.timer.add("write", time.thread_time() - c0, calls=self.written)


def blob_mask(height: int, width: int, objects: int) -> np.ndarray:
    """(H, W) int32 mask of ``objects`` ellipses on a grid: a stand-in first mask for a source without one."""
    if not 1 <= objects <= 255:
        raise InputError(f"objects must be 1..255, got {objects}")
    cols = int(np.ceil(np.sqrt(objects)))
    rows = int(np.ceil(objects / cols))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    mask = np.zeros((height, width), np.int32)
    ry, rx = height / rows / 3, width / cols / 3
    for k in range(objects):
        cy, cx = (k // cols + 0.5) * height / rows, (k % cols + 0.5) * width / cols
        mask[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = k + 1
    return mask


# ---------------------------------------------------------------------------------------------- report
def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (``getrusage`` ``ru_maxrss``)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device | None = None) -> dict[str, object]:
    """CPU model, cores, load average, Python/torch versions, torch threads, native bf16, GPU name."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        usable = os.cpu_count()
    info: dict[str, object] = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": usable,
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "cpu_capability": cpu_capability(),
        "cpu_native_bf16": cpu_supports_bf16(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "memvos": __version__,
        "allocator": describe_allocator(),
    }
    if device is not None and device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _session_settings(session: InferenceSession) -> dict[str, object]:
    return {
        "precision": session.precision,
        "backend": session.backend,
        "device": str(session.device),
        "memory_read": session.reader.kind,
        "kmn_sigma": session.reader.sigma,
        "compile": session.compile,
        "top_k": session.reader.top_k,
        "mem_every": session.policy.mem_every,
        "max_memory_frames": session.policy.max_frames,
        "size": session.size,
        "flush_denormals": session.flush_denormals,
    }


def run_benchmark(
    session: InferenceSession,
    frames: FrameSource,
    masks: Mapping[str, Path | np.ndarray],
    *,
    warmup: int = 5,
    limit: int | None = None,
    out_dir: str | Path | None = None,
    progress: bool = False,
) -> dict[str, object]:
    """Segment ``frames`` with ``session`` (masks: frame stem -> mask), writing PNGs, and time every stage.

    Args:
        frames: a :class:`SyntheticVideo` or any :class:`FrameSource` (decoded in its own thread).
        masks: given masks, as for :func:`~memvos.inference.video.propagate_video`.
        warmup: frames processed before the clock starts (excluded from fps and stage times).
        limit: process at most this many frames of ``frames`` (None: all).
        out_dir: where the PNG masks go (None: a temporary folder, deleted afterwards).
    Returns:
        JSON-ready dict: ``fps`` (end to end after warm-up, until the last PNG is written), ``stages_ms``
        ({stage: ms per frame} for every name in :data:`STAGES`), ``stage_calls``, ``frames``,
        ``measured_frames``, ``seconds``, ``peak_rss_mib``, ``settings``, ``machine``.
    """
    if isinstance(frames, SyntheticVideo):
        source: SyntheticVideo | _TimedFrames = frames
        if limit:
            raise ValueError("give the frame count to SyntheticVideo, not limit")
    else:
        source = _TimedFrames(frames, limit)
    total = len(source)
    kept = set(source.names)
    masks = {stem: m for stem, m in masks.items() if stem in kept}  # --frames may cut the video short
    if not masks:
        raise InputError(f"no mask is given for the first {total} frames")
    if not 0 <= warmup < total:
        raise InputError(f"--warmup {warmup} must be smaller than the number of frames ({total})")
    timer = StageTimer(cuda_sync=session.device.type == "cuda")
    source.timer = timer
    previous_timer, session.timer = session.timer, timer
    warm_snapshot: dict[str, tuple[float, int]] = {}
    try:
        with (
            tempfile.TemporaryDirectory(prefix="memvos-bench-") if out_dir is None else nullcontext(out_dir)
        ) as d:
            t_start = time.perf_counter()
            with _TimedMaskWriter(d, timer) as writer:
                for i, (stem, _, result) in enumerate(
                    propagate_video(session, source, masks, progress=progress, desc="bench", timer=timer)
                ):
                    t0 = time.perf_counter()
                    writer.submit(stem, result.labels)
                    timer.add("write_wait", time.perf_counter() - t0)
                    if i + 1 == warmup:
                        t_start = time.perf_counter()
                        warm_snapshot = timer.snapshot()
            seconds = time.perf_counter() - t_start
            written = writer.written
    finally:
        session.timer = previous_timer
    totals = timer.snapshot()
    stepped = totals.get("step", (0.0, 0))[1]  # frames segmented, warm-up included
    measured = stepped - warmup
    if written != stepped:
        raise RuntimeError(f"wrote {written} masks for {stepped} frames")
    stats = timer.since(warm_snapshot)
    for name in (*_THREAD_CPU_STAGES, "synthesis"):  # background threads run ahead/behind: all frames
        if name in totals:
            stats[name] = totals[name]
    inner = sum(stats.get(s, (0.0, 0))[0] for s in SESSION_STAGES)
    stats["other"] = (max(0.0, stats["step"][0] - inner), measured)
    stages_ms: dict[str, float] = {}
    calls: dict[str, int] = {}
    for name in STAGES:
        sec, n = stats.get(name, (0.0, 0))
        per = n if name in _THREAD_CPU_STAGES else measured  # background threads: per frame they handled
        stages_ms[name] = round(1000 * sec / per, 3) if per else 0.0
        calls[name] = n
    synth = stats.get("synthesis")
    settings: dict[str, object] = {
        "source": str(frames.path),
        "height": frames.height,
        "width": frames.width,
        "objects": frames.objects if isinstance(frames, SyntheticVideo) else None,
        "frames": total,
        "warmup": warmup,
        **_session_settings(session),
    }
    return {
        "fps": round(measured / seconds, 3) if seconds > 0 else 0.0,
        "frames": stepped,
        "measured_frames": measured,
        "seconds": round(seconds, 3),
        "stages_ms": stages_ms,
        "stage_calls": calls,
        "stage_clocks": {s: "thread CPU" if s in _THREAD_CPU_STAGES else "wall" for s in STAGES},
        "synthesis_ms": round(1000 * synth[0] / synth[1], 3) if synth and synth[1] else None,
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "settings": settings,
        "machine": machine_info(session.device),
    }


def format_report(report: Mapping[str, object]) -> str:
    """Human-readable summary of a :func:`run_benchmark` report (plus any keys the CLI added)."""
    s = dict(report["settings"])  # type: ignore[arg-type]
    m = dict(report["machine"])  # type: ignore[arg-type]
    stages = dict(report["stages_ms"])  # type: ignore[arg-type]
    lines = []
    if s.get("random_weights"):
        lines.append("*** RANDOM WEIGHTS: timings only, the masks are meaningless ***")
    objects = s.get("objects")
    lines += [
        f"model {s.get('model', '?')}  {s['width']}x{s['height']}"
        + (f"  {objects} object(s)" if objects else "")
        + f"  {report['frames']} frames ({s['warmup']} warm-up)"
        + f"  precision {s['precision']}  backend {s.get('backend', 'torch')}  device {s['device']}"
        + ("  subnormals flushed" if s.get("flush_denormals") else ""),
        f"machine: {m['cpu']} ({m.get('cpu_capability', '?')}), {m['cores_usable']}/{m['cores']} cores, "
        f"{m['torch_threads']} torch threads, "
        f"load {m['load_average_1min']}, torch {m['torch']}, {m.get('allocator', '?')}"
        + (f", GPU {m['gpu']}" if m.get("gpu") else ""),
        f"fps {report['fps']:.2f} end to end "
        f"({report['measured_frames']} frames in {report['seconds']:.2f} s)"
        f"   peak RSS {report['peak_rss_mib']:.0f} MiB",
        "ms per frame:  " + "  ".join(f"{k} {stages[k]:.1f}" for k in STAGES),
    ]
    return "\n".join(lines)
