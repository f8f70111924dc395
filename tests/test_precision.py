"""bf16 training numerics on the CPU: which attention kernel each call runs, and that it computes
the same attention (``ediff_core.tools.precision``, #26.2)."""

import pytest
import torch
import torch.nn.functional as F

from ediff_core.tools.precision import MANY_KEYS, precision_context


def _graph(t: torch.Tensor) -> set[str]:
    """Names of every autograd node behind ``t``."""
    seen, todo, names = set(), [t.grad_fn], set()
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(node.name())
        todo.extend(n for n, _ in node.next_functions)
    return names


def _qkv(queries: int, keys: int, dtype=torch.bfloat16):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 2, queries, 32, generator=g)
    k, v = torch.randn(2, 2, keys, 32, generator=g), torch.randn(2, 2, keys, 32, generator=g)
    return [x.to(dtype).requires_grad_() for x in (q, k, v)]


def _flash(names: set[str]) -> bool:
    return any("Flash" in n for n in names)


@pytest.mark.parametrize("keys", [MANY_KEYS, 16])
def test_bf16_attention_runs_the_chosen_kernel_and_computes_the_same_attention(keys):
    q, k, v = _qkv(256, keys)
    with precision_context("bf16", "cpu"):
        out = F.scaled_dot_product_attention(q, k, v)
    assert out.dtype == torch.bfloat16
    names = _graph(out)
    if keys >= MANY_KEYS:  # flash in fp32, cast back
        assert _flash(names) and "ToCopyBackward0" in names, names
    else:  # the math kernel: matmuls and a softmax autograd can see
        assert not _flash(names) and any("Softmax" in n for n in names), names
    ref_in = [x.detach().float().requires_grad_() for x in (q, k, v)]
    ref = F.scaled_dot_product_attention(*ref_in)
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)
    out.float().pow(2).sum().backward()
    ref.pow(2).sum().backward()
    for got, want in zip((q, k, v), ref_in):
        torch.testing.assert_close(got.grad.float(), want.grad, atol=5e-2, rtol=5e-2)


def test_many_keys_under_bf16_are_attended_in_fp32():
    """The flash path upcasts, so only its output is rounded to bf16: it is the fp32 attention
    rounded, closer to it than PyTorch's own bf16 flash kernel."""
    q, k, v = _qkv(256, 2 * MANY_KEYS)
    ref = F.scaled_dot_product_attention(*(x.detach().float() for x in (q, k, v))).bfloat16().float()
    with precision_context("bf16", "cpu"):
        ours = F.scaled_dot_product_attention(q, k, v)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        stock = F.scaled_dot_product_attention(q, k, v)
    ours_err, stock_err = ((t.float() - ref).abs().mean().item() for t in (ours, stock))
    assert ours_err < 0.1 * stock_err, (ours_err, stock_err)


def test_fp32_and_plain_autocast_keep_the_default_kernel():
    q, k, v = _qkv(64, 16, torch.float32)
    with precision_context("fp32", "cpu"):
        assert _flash(_graph(F.scaled_dot_product_attention(q, k, v)))
    with precision_context("bf16", "cpu"):
        pass
    assert _flash(_graph(F.scaled_dot_product_attention(q, k, v)))  # the mode ends with the context
