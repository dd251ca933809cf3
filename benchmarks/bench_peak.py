"""The CPU's ceiling for the bf16 speed-up: GEMM and STM-decoder conv throughput, fp32 vs bf16.

The STM-R50 target (5x over fp32 eager) assumes AMX tiles; on CPUs with AVX512-BF16 but no AMX a bf16 FMA
instruction does twice the work of an fp32 one, so compute-bound layers gain at most ~2x. This prints the
measured GFLOP/s of both dtypes (median of ``--repeats``) so the ceiling is a measurement, not a claim.

    .venv/bin/python benchmarks/bench_peak.py [--repeats 15]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from memvos.precision import cpu_supports_bf16


def _median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, native bf16: {cpu_supports_bf16()}")
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    gemm_flop = 2 * n**3
    # STM decoder's heaviest layer: 3x3 conv 256 -> 256 at /4 of 480x864 (120x216)
    x = torch.randn(1, 256, 120, 216)
    w = torch.randn(256, 256, 3, 3) * 0.02
    conv_flop = 2 * 256 * 256 * 9 * 120 * 216
    rows = []
    with torch.inference_mode():
        fp32_gemm = _median_ms(lambda: a @ b, args.repeats)
        ab, bb = a.bfloat16(), b.bfloat16()
        bf16_gemm = _median_ms(lambda: ab @ bb, args.repeats)
        fp32_conv = _median_ms(lambda: F.conv2d(x, w, padding=1), args.repeats)
        xc = x.bfloat16().contiguous(memory_format=torch.channels_last)
        wc = w.bfloat16().contiguous(memory_format=torch.channels_last)
        bf16_conv = _median_ms(lambda: F.conv2d(xc, wc, padding=1), args.repeats)
    rows.append(("GEMM 2048^3", gemm_flop, fp32_gemm, bf16_gemm))
    rows.append(("conv 3x3 256->256 @120x216", conv_flop, fp32_conv, bf16_conv))
    for name, flop, t32, t16 in rows:
        print(
            f"{name:28s} fp32 {t32:7.1f} ms ({flop / t32 / 1e6:6.0f} GFLOP/s)   "
            f"bf16 {t16:7.1f} ms ({flop / t16 / 1e6:6.0f} GFLOP/s)   bf16 speed-up {t32 / t16:.2f}x"
        )


if __name__ == "__main__":
    main()
