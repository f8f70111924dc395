"""Training numerics (#26.2): fp32, or bf16 autocast with fp32 master weights, and which attention
kernel each attention call runs under bf16 on the CPU.

The sampling path never enters this module: inference stays fp32 with the fused SDPA processor.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.overrides import TorchFunctionMode

PRECISIONS = ("fp32", "bf16")
MANY_KEYS = 128  # attention over at least this many keys runs the flash kernel in fp32 under CPU bf16


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")


class CpuAttentionKernels(TorchFunctionMode):
    """Under CPU bf16 autocast, runs each ``F.scaled_dot_product_attention`` on the kernel that is
    fastest for its shape; the attention computed is the same up to rounding.

    PyTorch's CPU flash kernel is slower in bf16 than in fp32 at every ediff-mini shape. Forward plus
    backward in ms at batch 32, head dim 32, 2 threads (``scripts/attention_kernels.py``, 2-core AMD
    EPYC with avx512_bf16, 2026-12-07), flash fp32 / flash bf16 / math bf16: 256 queries × 256 keys
    24.9 / 31.1 / 35.8; 256 × 77: 12.0 / 16.6 / 10.6; 64 × 64: 4.8 / 10.5 / 7.2. So attention over
    ``MANY_KEYS`` or more keys runs flash in fp32 and returns bf16; the rest runs the math kernel in
    bf16, which a whole training step measured fastest of the mixes tried (flash fp32 for every
    call was not timed in a whole step). Autograd differentiates the kernel the forward pass chose.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention or not torch.is_autocast_enabled("cpu") or args[0].device.type != "cpu":
            return func(*args, **kwargs)
        query, key, value, *rest = args
        if key.shape[-2] >= MANY_KEYS:
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION), torch.autocast("cpu", enabled=False):
                return func(query.float(), key.float(), value.float(), *rest, **kwargs).to(query.dtype)
        with sdpa_kernel(SDPBackend.MATH):
            return func(query, key, value, *rest, **kwargs)


def precision_context(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """The forward pass's numerics: fp32 as is, or bf16 autocast on the CPU (AMX/AVX-512 bf16; with
    ``CpuAttentionKernels``) or CUDA. The parameters, their gradients, AdamW's moments and the EMA
    stay fp32 (mixed precision's master weights), so only matmuls, convolutions and attention run
    in bf16."""
    check_precision(precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    kind = torch.device(device).type
    stack = contextlib.ExitStack()
    stack.enter_context(torch.autocast(kind, dtype=torch.bfloat16))
    if kind == "cpu":
        stack.enter_context(CpuAttentionKernels())
    return stack
