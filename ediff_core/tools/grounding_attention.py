"""The training-time cross-attention processor of token grounding (``train --grounding W``).

It is installed only on a network being trained with W > 0. While a ``GroundingRecorder`` has
targets it writes cross-attention out (softmax(QKᵀ/√d_k + mask)·V, as diffusers'
``AttnProcessor2_0`` computes it fused) so the probabilities can be supervised; otherwise, and for
self-attention, it runs the fused SDPA processor unchanged. Sampling never installs it, so the
inference path keeps the fused processor.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch import Tensor

from .grounding import GroundingTargets, layer_grounding_loss


class GroundingRecorder:
    """Holds one step's targets and the grounding loss of each cross-attention layer it ran."""

    def __init__(self) -> None:
        self.targets: GroundingTargets | None = None
        self.losses: list[Tensor] = []

    @contextmanager
    def recording(self, targets: GroundingTargets) -> Iterator["GroundingRecorder"]:
        self.targets, self.losses = targets, []
        try:
            yield self
        finally:
            self.targets = None

    def add(self, probs: Tensor) -> None:
        self.losses.append(layer_grounding_loss(probs, self.targets))

    def loss(self) -> Tensor:
        """The mean over the layers recorded in the last ``recording``."""
        if not self.losses:
            raise RuntimeError("no cross-attention layer ran while recording; the network has no cross-attention to ground")
        return torch.stack(self.losses).mean()


class GroundingAttnProcessor(AttnProcessor2_0):
    """``AttnProcessor2_0`` whose cross-attention, while ``recorder`` has targets, hands its
    probabilities to the recorder (differentiably)."""

    def __init__(self, recorder: GroundingRecorder):
        super().__init__()
        self.recorder = recorder

    def __call__(self, attn: Attention, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, temb: Tensor | None = None, **kwargs) -> Tensor:
        if self.recorder.targets is None or encoder_hidden_states is None or not attn.is_cross_attention:
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        if hidden_states.ndim != 3 or attn.spatial_norm is not None or attn.group_norm is not None or attn.norm_cross \
                or attn.norm_q is not None or attn.residual_connection:
            raise RuntimeError("grounding's attention supports the U-Net's transformer cross-attention only (tokens in, no extra norms)")
        B, N, _ = hidden_states.shape
        S = encoder_hidden_states.shape[1]
        query, key, value = attn.to_q(hidden_states), attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)
        d = key.shape[-1] // attn.heads
        query, key, value = (t.view(B, -1, attn.heads, d).transpose(1, 2) for t in (query, key, value))  # (B, heads, ·, d)
        logits = (query @ key.transpose(-1, -2)) * attn.scale  # (B, heads, N, S)
        if attention_mask is not None:
            logits = logits + attn.prepare_attention_mask(attention_mask, S, B).view(B, attn.heads, -1, S)
        probs = logits.float().softmax(-1)
        self.recorder.add(probs)
        out = (probs.to(value.dtype) @ value).transpose(1, 2).reshape(B, N, attn.heads * d)
        return attn.to_out[1](attn.to_out[0](out)) / attn.rescale_output_factor


def install_grounding(net) -> GroundingRecorder:
    """Puts ``GroundingAttnProcessor`` on every attention layer of one ``EDiffUNet``; returns the recorder."""
    recorder = GroundingRecorder()
    for module in net.unet.modules():
        if isinstance(module, Attention):
            if type(module.processor) is not AttnProcessor2_0:
                raise RuntimeError(f"attention processor {type(module.processor).__name__} is not the stock one; grounding cannot be installed over it")
            module.set_processor(GroundingAttnProcessor(recorder))
    return recorder
