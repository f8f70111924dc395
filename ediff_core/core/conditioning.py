"""Multi-encoder conditioning (eDiff-I §4.2, Appendix A).

Cross-attention keys/values are the concatenation ``[null | CLIP text (77) | T5 (L) | CLIP image (1)]``
with a padding mask; pooled CLIP text and the CLIP image embedding are projected and added to
the time embedding. Each embedding is dropped by zeroing the whole tensor (and masking its
tokens); all three dropped is the unconditional input of classifier-free guidance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Literal, Protocol

import torch
from torch import Tensor, nn

EncoderMode = Literal["both", "t5", "clip"]
ENCODER_MODES: tuple[str, ...] = ("both", "t5", "clip")

# Index of each embedding in ``Cond.keep``.
CLIP_TEXT, T5, CLIP_IMAGE = 0, 1, 2

# Paper's per-embedding dropout rates (secondary summary of Table 7).
DROPOUT_RATES = {"clip_text": 0.2, "t5": 0.25, "clip_image": 0.9}


@dataclass
class Cond:
    """A batch of conditioning for ``D(x, σ, cond)``; every tensor has the batch first.

    Dropped embeddings are zero and their ``keep`` flag is False; ``keep`` drives the masks, so
    training-time dropout and inference-time encoder selection are the same operation.
    """

    clip_tokens: Tensor  # (B, 77, D_clip) CLIP text per-token features
    clip_mask: Tensor  # (B, 77) bool, real tokens
    clip_pooled: Tensor  # (B, D_pool) projected EOT feature
    t5_tokens: Tensor  # (B, L, D_t5)
    t5_mask: Tensor  # (B, L) bool
    image_embed: Tensor  # (B, D_img) CLIP image embedding (zeros when absent)
    keep: Tensor  # (B, 3) bool: [clip text, T5, clip image] present
    lowres: Tensor | None = None  # (B, 3, H, W) super-resolution input, upsampled, in [-1, 1]
    aug_sigma: Tensor | None = None  # (B,) noise-conditioning augmentation level of ``lowres``
    token_maps: Tensor | None = None  # (B, S, h, w) paint-with-words masks over the key sequence
    pww_weight: Tensor | None = None  # (B,) paint-with-words strength w′ (0 = off)

    @property
    def batch_size(self) -> int:
        return self.keep.shape[0]

    @property
    def device(self) -> torch.device:
        return self.keep.device

    def index(self, idx: Tensor | slice) -> "Cond":
        """Selects samples (a bool mask, index tensor or slice)."""
        return Cond(**{f.name: None if (v := getattr(self, f.name)) is None else v[idx] for f in fields(self)})

    def to(self, device: torch.device | str) -> "Cond":
        return Cond(**{f.name: None if (v := getattr(self, f.name)) is None else v.to(device) for f in fields(self)})

    @staticmethod
    def cat(conds: list["Cond"]) -> "Cond":
        """Concatenates batches; an optional field missing in some parts is zero-filled there."""
        out = {}
        for f in fields(Cond):
            vals = [getattr(c, f.name) for c in conds]
            if all(v is None for v in vals):
                out[f.name] = None
                continue
            ref = next(v for v in vals if v is not None)
            out[f.name] = torch.cat(
                [v if v is not None else ref.new_zeros((c.batch_size, *ref.shape[1:])) for v, c in zip(vals, conds)]
            )
        return Cond(**out)

    def with_keep(self, keep: Tensor) -> "Cond":
        """Zeroes every embedding whose flag in ``keep`` (B, 3) is False (and ANDs the flags)."""
        keep = self.keep & keep.to(self.keep.device)
        k = keep.to(self.clip_tokens.dtype)
        return replace(
            self,
            clip_tokens=self.clip_tokens * k[:, CLIP_TEXT, None, None],
            clip_pooled=self.clip_pooled * k[:, CLIP_TEXT, None],
            t5_tokens=self.t5_tokens * k[:, T5, None, None],
            image_embed=self.image_embed * k[:, CLIP_IMAGE, None],
            keep=keep,
        )

    def unconditional(self) -> "Cond":
        """All three embeddings dropped: the input of classifier-free guidance's negative branch."""
        return replace(self.with_keep(torch.zeros_like(self.keep)), token_maps=None, pww_weight=None)


def select_encoders(cond: Cond, mode: EncoderMode, use_image: bool | None = None) -> Cond:
    """Inference-time encoder ablation (§5.2): keep T5, CLIP text or both; the image on or off.

    ``use_image=None`` keeps the image embedding where one was given.
    """
    if mode not in ENCODER_MODES:
        raise ValueError(f"encoders must be one of {', '.join(ENCODER_MODES)}; got {mode!r}")
    keep = torch.ones_like(cond.keep)
    keep[:, CLIP_TEXT] = mode in ("both", "clip")
    keep[:, T5] = mode in ("both", "t5")
    if use_image is not None:
        keep[:, CLIP_IMAGE] = use_image
    return cond.with_keep(keep)


def drop_embeddings(cond: Cond, rates: dict[str, float] = DROPOUT_RATES, generator: torch.Generator | None = None,
                    rows: tuple[int, int] | None = None) -> Cond:
    """Training-time dropout: each embedding independently zeroed with its rate (App. A).
    ``rows``: (offset, global batch) under data parallelism, as in ``EDMLoss``."""
    p = torch.tensor([rates["clip_text"], rates["t5"], rates["clip_image"]])
    n = cond.batch_size
    offset, total = rows or (0, n)
    keep = torch.rand(total, 3, generator=generator)[offset : offset + n] >= p
    return cond.with_keep(keep.to(cond.device))


def fourier_features(x: Tensor, n: int) -> Tensor:
    """Sinusoidal features of a (B,) tensor: (B, n)."""
    freqs = torch.exp(-math.log(1000.0) * torch.arange(n // 2, device=x.device, dtype=torch.float32) / (n // 2))
    a = x.float()[:, None] * freqs[None] * 100
    return torch.cat([a.cos(), a.sin()], dim=1)



class Denoiser(Protocol):
    """The denoiser contract ``D(x, σ, cond) -> x̂₀`` (EDM preconditioning, eDiff-I §3, App. A).

    One network, an ``ExpertEnsemble`` (§4.1) and the guidance wrappers all meet it; ``CFGDenoiser``
    takes a ``GuidedCond`` (cond, uncond, scale) in the ``cond`` slot.
    """

    def __call__(self, x: Tensor, sigma: Tensor, cond: Cond) -> Tensor: ...

class ConditionProjector(nn.Module):
    """Projects the three embeddings into cross-attention tokens and a global vector.

    Args:
        clip_dim: CLIP text per-token width.
        clip_pooled_dim: width of the pooled (projected) CLIP text feature.
        t5_dim: T5 hidden width.
        image_dim: CLIP image embedding width.
        width: cross-attention width of the U-Net.
        aug_features: Fourier features of the SR augmentation level in the global vector (0 = base model).
    """

    def __init__(self, clip_dim: int, clip_pooled_dim: int, t5_dim: int, image_dim: int, width: int, aug_features: int = 0):
        super().__init__()
        self.proj_clip = nn.Linear(clip_dim, width)
        self.proj_t5 = nn.Linear(t5_dim, width)
        self.proj_image = nn.Linear(image_dim, width)
        self.null_token = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.aug_features = aug_features
        self.global_dim = clip_pooled_dim + image_dim + aug_features

    def forward(self, cond: Cond) -> tuple[Tensor, Tensor, Tensor]:
        """Returns keys (B, S, W), key mask (B, S) bool and the global vector (B, global_dim)."""
        B = cond.batch_size
        keep = cond.keep
        tokens = torch.cat(
            [
                self.null_token.expand(B, -1, -1),
                self.proj_clip(cond.clip_tokens),
                self.proj_t5(cond.t5_tokens),
                self.proj_image(cond.image_embed)[:, None],
            ],
            dim=1,
        )
        mask = torch.cat(
            [
                torch.ones(B, 1, dtype=torch.bool, device=keep.device),
                cond.clip_mask & keep[:, CLIP_TEXT, None],
                cond.t5_mask & keep[:, T5, None],
                keep[:, CLIP_IMAGE, None],
            ],
            dim=1,
        )
        parts = [cond.clip_pooled, cond.image_embed]
        if self.aug_features:
            aug = cond.aug_sigma if cond.aug_sigma is not None else torch.zeros(B, device=keep.device)
            parts.append(fourier_features(torch.log(aug + 1e-3) / 4, self.aug_features))
        return tokens, mask, torch.cat(parts, dim=1)


def key_layout(t5_length: int, clip_length: int = 77) -> dict[str, slice]:
    """Where each embedding sits in the key sequence built by ``ConditionProjector``."""
    return {
        "null": slice(0, 1),
        "clip": slice(1, 1 + clip_length),
        "t5": slice(1 + clip_length, 1 + clip_length + t5_length),
        "image": slice(1 + clip_length + t5_length, 2 + clip_length + t5_length),
    }
