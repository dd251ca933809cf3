"""What each CPU speed lever gives on memvos-lite's two hot spots: the query encoder and the memory read.

Times one frame (median of ``--runs``) at the processing size (default 480x864, the padded 854x480 frame)
with random weights, in one process, so the ratios are comparable:

* encoder: fp32 eager | bf16 autocast (NCHW) | bf16 autocast + channels_last | + BatchNorms folded into the
  convs | + weights stored in bf16 and conv + ReLU6 fused into one oneDNN kernel (what the session runs) |
  + torch.compile (``--compile``, inductor with frozen weights)
* memory read (``--memory-frames`` frames of keys/values, one object): the reference (B, M, Q) layout in
  float32 (the exact path, ``precision fp32``) | the same under bf16 autocast | the query-major,
  cache-sized chunks with a float32 affinity | + bf16 affinity and softmax (memvos-lite's fast path)

This script does not set up the allocator as the ``memvos`` command does; run it under each to compare:
``LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 python benchmarks/bench_levers.py``,
``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432 python ...`` and with neither.

    .venv/bin/python benchmarks/bench_levers.py [--height 480 --width 864] [--threads 2] [--skip-compile]
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable

import torch
from bench_backbone import time_ms  # this folder's timing helper (the script's folder is on sys.path)

from memvos.allocator import describe
from memvos.inference.session import InferenceSession
from memvos.memory.read import MemoryReader
from memvos.models.lite import KEY_DIM, VALUE_DIM, LiteMemoryNetwork


def bf16() -> torch.autocast:
    return torch.autocast("cpu", dtype=torch.bfloat16)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=864)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=11)
    ap.add_argument("--memory-frames", type=int, default=8)
    ap.add_argument("--skip-compile", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    h, w = args.height, args.width
    print(f"torch {torch.__version__}, {args.threads} threads, frame {w}x{h}, allocator: {describe()}")

    model = LiteMemoryNetwork(pretrained_backbone=False).eval()
    x = torch.rand(1, 3, h, w)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    rows: list[tuple[str, float]] = []
    with torch.inference_mode():
        rows.append(("encoder fp32", time_ms(lambda: model.encode_frames(x), args.runs, 2)))

        def enc_bf16(m: LiteMemoryNetwork, inp: torch.Tensor) -> Callable[[], object]:
            def run() -> object:
                with bf16():
                    return m.encode_frames(inp)

            return run

        rows.append(("encoder bf16 autocast, NCHW", time_ms(enc_bf16(model, x), args.runs, 2)))
        cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
        rows.append(("encoder bf16 autocast + channels_last", time_ms(enc_bf16(cl, x_cl), args.runs, 2)))
        folded = copy.deepcopy(model).fuse_for_inference_().to(memory_format=torch.channels_last)
        for conv in folded.modules():
            if hasattr(conv, "fuse_activation"):
                conv.fuse_activation = False  # BN folding alone
        rows.append(("  + BatchNorm folded", time_ms(enc_bf16(folded, x_cl), args.runs, 2)))
        fused = InferenceSession(model, precision="bf16").model  # the session's own copy
        rows.append(
            ("  + bf16 weights, fused conv+ReLU6 (session)", time_ms(enc_bf16(fused, x_cl), args.runs, 2))
        )
        if not args.skip_compile:
            import torch._inductor.config as inductor_config

            inductor_config.freezing = True
            compiled = torch.compile(fused.encode_frames, dynamic=False)

            def run_compiled() -> object:
                with bf16():
                    return compiled(x_cl)

            t0 = time.perf_counter()
            run_compiled()
            print(f"(torch.compile of the encoder: {time.perf_counter() - t0:.1f} s)")
            rows.append(("  + torch.compile (--compile)", time_ms(run_compiled, args.runs, 2)))

        q = (h // 16) * (w // 16)
        m = args.memory_frames * q
        mk, qk = torch.randn(1, KEY_DIM, m), torch.randn(1, KEY_DIM, q)
        mv = torch.randn(1, VALUE_DIM, m)
        exact = MemoryReader(similarity="l2", exact=True)
        fast = MemoryReader(similarity="l2")
        fast16 = MemoryReader(similarity="l2", bf16_affinity=True)
        hw = (h // 16, w // 16)
        rows.append(
            (
                f"memory read, {args.memory_frames} frames: reference layout fp32",
                time_ms(lambda: exact(mk, mv, qk, hw), args.runs, 2),
            )
        )
        mkb, qkb, mvb = mk.bfloat16(), qk.bfloat16(), mv.bfloat16()

        def exact_bf16() -> object:
            with bf16():
                return exact(mkb, mvb, qkb, hw)

        def fast_bf16() -> object:
            with bf16():
                return fast(mkb, mvb, qkb, hw)

        def fast16_bf16() -> object:
            with bf16():
                return fast16(mkb, mvb, qkb, hw)

        rows.append(("memory read: reference layout, bf16 autocast", time_ms(exact_bf16, args.runs, 2)))
        rows.append(("memory read: query-major chunks, fp32 affinity", time_ms(fast_bf16, args.runs, 2)))
        rows.append(("  + bf16 affinity and softmax (memvos-lite)", time_ms(fast16_bf16, args.runs, 2)))
    width = max(len(name) for name, _ in rows)
    for name, ms in rows:
        print(f"{name:<{width}}  {ms:8.1f} ms")


if __name__ == "__main__":
    main()
