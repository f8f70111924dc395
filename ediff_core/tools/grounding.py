"""Token grounding (beyond the paper; after TokenCompose, Wang et al., CVPR 2024): a training loss
that pulls each object's cross-attention inside the object's mask.

Shapes World knows every object's mask and which words of the caption name it
(``data.captions.grounded_captions``). For each object group g of a caption (one object, or the
union of "two blue stars") the key columns of its words, in both the CLIP and the T5 parts of
``[null | CLIP 77 | T5 L | image]``, are ``columns[g]``. At every cross-attention layer, with the
probabilities P = softmax(QKᵀ/√d_k) averaged over heads, the group's attention at pixel n is
a_g(n) = Σ_{s ∈ columns[g]} P(n, s), and with M_g the mask area-downsampled to the layer:

    token loss  (1 − Σ_n a_g(n)·[M_g(n) > 0] / Σ_n a_g(n))²         TokenCompose's L_token
    pixel loss  mean_n KL(Bernoulli(M_g(n)) ‖ Bernoulli(a_g(n)))       TokenCompose's BCE L_pixel less
                                                                       the mask's own entropy

Both are zero exactly when the group's attention lies inside its mask (the pixel term: when it
equals the mask's coverage), and positive otherwise. The loss is their sum averaged over the
groups with a visible token (a dropped encoder hides its columns) and over the layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..core.conditioning import CLIP_TEXT, T5, key_layout

MAX_GROUPS = 4  # Shapes World scenes hold at most four objects
MAX_SPANS = 12  # words per group: size, colour, shape, and up to three relation sentences' references
_EPS = 1e-6


@dataclass
class GroundingTargets:
    """One batch's grounding targets over the key sequence."""

    columns: Tensor  # (B, G, S) float 0/1: the key positions naming object group g
    masks: Tensor  # (B, G, H, W) float in [0, 1]: each group's coverage at the base resolution
    valid: Tensor  # (B, G) bool: the group exists and some of its columns are visible


def grounding_fields(scene, caption, resolution: int) -> dict[str, Tensor]:
    """A training sample's fixed-size grounding fields: ``ground_spans`` (G, K, 2) character spans
    (−1 = none) and ``ground_masks`` (G, R, R), group g's objects' union at ``resolution``."""
    from ..data.shapes_world import object_masks

    masks = object_masks(scene, resolution)
    spans = torch.full((MAX_GROUPS, MAX_SPANS, 2), -1, dtype=torch.long)
    union = torch.zeros(MAX_GROUPS, resolution, resolution)
    for g, (objects, words) in enumerate(caption.groups().items()):
        spans[g, : len(words)] = torch.tensor(words[:MAX_SPANS])
        union[g] = torch.from_numpy(np.max(masks[list(objects)], axis=0))
    return {"ground_spans": spans, "ground_masks": union}


def batch_targets(enc, captions: list[str], spans: Tensor, masks: Tensor, keep: Tensor, t5_length: int, clip_length: int) -> GroundingTargets:
    """Maps each group's character spans to key columns with both tokenizers; a dropped encoder's
    columns (``keep``, after training dropout) are left out, as its tokens are masked."""
    layout = key_layout(t5_length, clip_length)
    B, G = spans.shape[:2]
    columns = torch.zeros(B, G, layout["image"].stop)
    keep = keep.cpu()
    for b, text in enumerate(captions):
        for g in range(G):
            words = [tuple(s) for s in spans[b, g].tolist() if s[0] >= 0]
            if not words:
                continue
            if keep[b, CLIP_TEXT]:
                columns[b, g, [layout["clip"].start + p for p in enc.clip_text.span_token_positions(text, words)]] = 1
            if keep[b, T5]:
                columns[b, g, [layout["t5"].start + p for p in enc.t5.span_token_positions(text, words)]] = 1
    device = masks.device
    return GroundingTargets(columns.to(device), masks.float(), (columns.sum(-1) > 0).to(device))


def layer_grounding_loss(probs: Tensor, targets: GroundingTargets) -> Tensor:
    """Token + pixel loss of one cross-attention layer's probabilities (B, heads, N, S); a scalar."""
    with torch.autocast(probs.device.type, enabled=False):  # fp32 even under bf16 training: 1 - 1e-6 is 1 in bf16
        return _layer_loss(probs.float().mean(1), targets)  # (B, N, S): averaged over heads


def _layer_loss(p: Tensor, targets: GroundingTargets) -> Tensor:
    B, N, S = p.shape
    H, W = targets.masks.shape[-2:]
    side = round((N * H / W) ** 0.5)
    if side * (N // side) != N:
        raise ValueError(f"{N} image tokens do not form a grid of aspect {H}:{W}")
    a = p @ targets.columns.to(p.dtype).transpose(1, 2)  # (B, N, G): each group's attention per pixel
    m = F.interpolate(targets.masks, size=(side, N // side), mode="area").flatten(2).transpose(1, 2)  # (B, N, G)
    inside = (a * (m > 0)).sum(1) / a.sum(1).clamp(min=_EPS)  # (B, G): share of the group's attention in its mask
    token = (1 - inside) ** 2
    a = a.clamp(_EPS, 1 - _EPS)
    kl = torch.xlogy(m, m) - m * a.log() + torch.xlogy(1 - m, 1 - m) - (1 - m) * (1 - a).log()
    pixel = kl.mean(1)  # (B, G)
    valid = targets.valid.to(p.dtype)
    return ((token + pixel) * valid).sum() / valid.sum().clamp(min=1)
