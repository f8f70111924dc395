"""Forward plus backward time of PyTorch's CPU attention kernels at ediff-mini's training shapes,
fp32 and bf16: the measurement behind ``ediff_core.tools.precision.CpuAttentionKernels`` (#26.2).

Shapes: batch 32, head dim 32; self-attention at 16² (256 × 256 tokens, 2 heads) and 8² (64 × 64,
4 heads), cross-attention to 77 text tokens. Median of ``--repeats`` after 2 warm-up calls.

Usage: .venv/bin/python scripts/attention_kernels.py [--threads 2] [--repeats 10]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

SHAPES = ((256, 256, 2), (256, 77, 2), (64, 64, 4), (64, 77, 4))  # (queries, keys, heads)


def seconds(queries: int, keys: int, heads: int, dtype: torch.dtype, backend: SDPBackend, repeats: int) -> float:
    q = torch.randn(32, heads, queries, 32, dtype=dtype, requires_grad=True)
    k, v = (torch.randn(32, heads, keys, 32, dtype=dtype, requires_grad=True) for _ in range(2))
    times = []
    with sdpa_kernel(backend):
        for _ in range(repeats + 2):
            t0 = time.perf_counter()
            F.scaled_dot_product_attention(q, k, v).sum().backward()
            times.append(time.perf_counter() - t0)
    return sorted(times[2:])[repeats // 2]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    print(f"forward + backward, ms (batch 32, head dim 32, {a.threads} threads, {time.strftime('%Y-%m-%d')})")
    print("| queries × keys | flash fp32 | flash bf16 | math fp32 | math bf16 |")
    print("|---|---|---|---|---|")
    for n, s, h in SHAPES:
        cells = [seconds(n, s, h, dt, b, a.repeats) * 1e3 for b in (SDPBackend.FLASH_ATTENTION, SDPBackend.MATH) for dt in (torch.float32, torch.bfloat16)]
        flash32, flash16, math32, math16 = cells
        print(f"| {n} × {s} | {flash32:.1f} | {flash16:.1f} | {math32:.1f} | {math16:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
