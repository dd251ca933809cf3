"""Time EfficientNet-Lite /16 trunks (``forward_features``) on CPU: fp32 vs bf16 autocast + channels_last.

Usage: ``python benchmarks/bench_backbone.py [--variants lite0 lite1 lite2] [--size 480 864] [--skip-bf16]``
Prints one line per (variant, mode): median ms over ``--runs`` timed runs after ``--warmup`` runs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from memvos.models.backbones.efficientnet_lite import efficientnet_lite


def time_ms(fn, runs: int, warmup: int) -> float:
    """Median wall time of ``fn()`` in milliseconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--variants", nargs="+", default=["lite0", "lite1", "lite2"])
    ap.add_argument("--size", nargs=2, type=int, default=[480, 864], metavar=("H", "W"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--max-stride", type=int, default=16)
    ap.add_argument("--skip-bf16", action="store_true", help="bf16 is very slow on CPUs without AVX512-BF16")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    h, w = args.size
    x = torch.rand(1, 3, h, w)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    print(f"torch {torch.__version__}, {args.threads} threads, 1x3x{h}x{w}, max_stride {args.max_stride}")
    for variant in args.variants:
        model = efficientnet_lite(variant, pretrained=False, max_stride=args.max_stride).eval()
        n_params = sum(p.numel() for p in model.parameters()) / 1e6
        with torch.inference_mode():
            fp32 = time_ms(lambda m=model: m.forward_features(x), args.runs, args.warmup)
            model_cl = model.to(memory_format=torch.channels_last)

            def run_bf16(m=model_cl, xx=x_cl) -> None:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    m.forward_features(xx)

            bf16 = float("nan") if args.skip_bf16 else time_ms(run_bf16, args.runs, args.warmup)
            fp32_cl = time_ms(lambda m=model_cl: m.forward_features(x_cl), args.runs, args.warmup)
            model_cl.fuse_bn_()
            fused = time_ms(lambda m=model_cl: m.forward_features(x_cl), args.runs, args.warmup)
        print(
            f"{variant}: {n_params:.2f} M params | fp32 {fp32:.1f} ms | fp32+channels_last {fp32_cl:.1f} ms"
            f" | fp32+channels_last+fuse_bn_ {fused:.1f} ms | bf16 autocast+channels_last {bf16:.1f} ms"
        )


if __name__ == "__main__":
    main()
