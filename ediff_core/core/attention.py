"""Cross-attention with Python inside: the processor, the recording hook and the one rule for when it runs.

Two features need the attention probabilities written out instead of diffusers' fused SDPA:
paint-with-words adds a bias to the logits (§4.3) and the attention maps of Fig. 3 read the
probabilities. ``needs_python_attention(cond)`` is the single rule saying when a call needs that
path; the network (which then passes ``cond`` and σ to its processors), the processor, ``accel``
(which then runs the eager U-Net instead of a compiled one) and the model server all ask it.

The processor is installed once, when a pipeline's stages are built (``install``); without token
maps and without a hook it runs the stock ``AttnProcessor2_0`` unchanged, so installing it alters
no output. This module imports only torch, diffusers and the conditioning types.
"""

from __future__ import annotations

import math
import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Iterator, Protocol

from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch import Tensor

if TYPE_CHECKING:
    from .conditioning import Cond

AttentionHook = Callable[[Tensor, "Tensor | None"], None]  # (probs (B, heads, N, S), σ (B,))
_local = threading.local()


class AttentionBias(Protocol):
    """An additive bias of cross-attention's logits, in the units of ``scores`` = QKᵀ/√d_k.

    Called with scores (B, heads, N, S), the additive key mask (B, heads, 1, S) or None, the
    conditioning, σ (B,) and the number N of image tokens; returns (B, 1, N, S).
    ``paint_with_words.PaintBias`` is the one of §4.3.
    """

    def __call__(self, scores: Tensor, attention_mask: Tensor | None, cond: "Cond", sigma: Tensor | None, n_tokens: int) -> Tensor: ...


@contextmanager
def attention_hook(hook: AttentionHook) -> Iterator[None]:
    """Within this block (this thread only), cross-attention probabilities are passed to ``hook``."""
    previous = getattr(_local, "hook", None)
    _local.hook = hook
    try:
        yield
    finally:
        _local.hook = previous


def current_attention_hook() -> AttentionHook | None:
    """The hook ``attention_hook`` set in this thread, if any (for code that moves evaluations
    between threads, e.g. a batching server: it must re-enter ``attention_hook`` there)."""
    return getattr(_local, "hook", None)


def paints(cond: "Cond | None") -> bool:
    """Whether ``cond`` carries paint-with-words token maps with a non-zero w′ on some row."""
    return cond is not None and cond.token_maps is not None and cond.pww_weight is not None and bool((cond.pww_weight != 0).any())


def needs_python_attention(cond: "Cond | None") -> bool:
    """The one rule: a call needs the written-out attention when it paints (§4.3) or when this
    thread records attention (Fig. 3). Otherwise every path may use fused or compiled attention."""
    return current_attention_hook() is not None or paints(cond)


def layer_hw(n_tokens: int, height: int, width: int) -> tuple[int, int]:
    """The (h, w) grid of a layer with ``n_tokens`` image tokens for a (height, width) sample."""
    f = math.sqrt(height * width / n_tokens)
    h = max(1, round(height / f))
    w = n_tokens // h
    if h * w != n_tokens:
        raise ValueError(f"{n_tokens} image tokens do not form a grid of aspect {height}:{width}")
    return h, w


class EDiffAttnProcessor(AttnProcessor2_0):
    """diffusers' ``AttnProcessor2_0`` plus an optional logit bias and the recording hook.

    When ``needs_python_attention(cond)`` is false, and always for self-attention, it runs the
    stock processor unchanged.

    Args:
        bias: added to cross-attention's logits while ``cond`` paints (None: never biased).
    """

    def __init__(self, bias: AttentionBias | None = None):
        super().__init__()
        self.bias = bias

    def __call__(self, attn: Attention, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, temb: Tensor | None = None,
                 cond: "Cond | None" = None, sigma: Tensor | None = None) -> Tensor:
        cross = attn.is_cross_attention and encoder_hidden_states is not None
        if not (cross and needs_python_attention(cond)):
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        hook = current_attention_hook()
        # The stock processor with the attention written out (mirrors AttnProcessor2_0).
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        B, N, _ = hidden_states.shape
        S = encoder_hidden_states.shape[1]
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, S, B).view(B, attn.heads, -1, S)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key, value = attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(B, -1, attn.heads, head_dim).transpose(1, 2)  # (B, heads, N, d)
        key = key.view(B, -1, attn.heads, head_dim).transpose(1, 2)  # (B, heads, S, d)
        value = value.view(B, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        scores = (query.float() @ key.float().transpose(-1, -2)) / math.sqrt(head_dim)  # QKᵀ/√d_k: (B, heads, N, S)
        logits = scores if attention_mask is None else scores + attention_mask.float()
        if self.bias is not None and paints(cond):
            logits = logits + self.bias(scores, attention_mask, cond, sigma, N)
        probs = logits.softmax(-1)  # (B, heads, N, S)
        if hook is not None:
            hook(probs, sigma)
        hidden_states = (probs.to(value.dtype) @ value).transpose(1, 2).reshape(B, -1, attn.heads * head_dim)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states.to(query.dtype)))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def install(net, bias: AttentionBias | None = None) -> None:
    """Puts ``EDiffAttnProcessor(bias)`` on every attention layer of one ``EDiffUNet`` (idempotent:
    an installed processor gets the new bias)."""
    for module in net.unet.modules():
        if isinstance(module, Attention):
            proc = module.processor
            if isinstance(proc, EDiffAttnProcessor):
                proc.bias = bias
            elif type(proc) is AttnProcessor2_0:
                module.set_processor(EDiffAttnProcessor(bias))
            else:
                raise RuntimeError(f"attention processor {type(proc).__name__} is not the stock one; the eDiff-I processor cannot be installed over it")

