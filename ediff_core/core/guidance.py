"""Classifier-free guidance and dynamic thresholding as denoiser wrappers (same contract).

CFG (GLIDE / Ho & Salimans): D̃ = D(x, σ, ∅) + w·(D(x, σ, c) − D(x, σ, ∅)), where ∅ is the
conditioning with all three embeddings dropped, or the negative prompt's. eDiff-I allows a
guidance scale per expert. Dynamic thresholding is Imagen's (Saharia et al. 2022, §2.3).
"""

from __future__ import annotations

from dataclasses import dataclass
import torch
from torch import Tensor, nn

from .conditioning import Cond, Denoiser


@dataclass
class GuidedCond:
    """Conditioning for ``CFGDenoiser``: the prompt, the negative branch and per-sample scales."""

    cond: Cond
    uncond: Cond
    scale: Tensor  # (B,) guidance w; 1 = no guidance

    def index(self, idx) -> "GuidedCond":
        return GuidedCond(self.cond.index(idx), self.uncond.index(idx), self.scale[idx])

    @staticmethod
    def cat(parts: list["GuidedCond"]) -> "GuidedCond":
        return GuidedCond(Cond.cat([p.cond for p in parts]), Cond.cat([p.uncond for p in parts]), torch.cat([p.scale for p in parts]))


class CFGDenoiser(nn.Module):
    """Classifier-free guidance around any denoiser; both branches run as one batch.

    Args:
        inner: the conditional denoiser (one model or an ``ExpertEnsemble``).
        per_expert: if the inner denoiser has ``guidance(sigma, default)``, use its per-expert scales.
    """

    def __init__(self, inner: Denoiser, per_expert: bool = True):
        super().__init__()
        self.inner = inner
        self.per_expert = per_expert and hasattr(inner, "guidance")

    def forward(self, x: Tensor, sigma: Tensor, gc: GuidedCond) -> Tensor:
        scale = self.inner.guidance(sigma, gc.scale) if self.per_expert else gc.scale
        if bool((scale == 1).all()):
            return self.inner(x, sigma, gc.cond)
        both = self.inner(torch.cat([x, x]), torch.cat([sigma, sigma]), Cond.cat([gc.cond, gc.uncond]))
        d_cond, d_uncond = both.chunk(2)
        return d_uncond + scale.reshape(-1, 1, 1, 1).to(x.dtype) * (d_cond - d_uncond)


def dynamic_threshold(x0: Tensor, percentile: float = 0.995) -> Tensor:
    """Imagen's dynamic thresholding: clip to the per-sample percentile s ≥ 1 of |x0|, divide by s."""
    s = torch.quantile(x0.abs().flatten(1).float(), percentile, dim=1).clamp(min=1.0).to(x0.dtype)
    s = s.reshape(-1, 1, 1, 1)
    return x0.clamp(-s, s) / s


class ThresholdedDenoiser(nn.Module):
    """Applies dynamic thresholding to the x0 prediction of ``inner`` (pixel space only)."""

    def __init__(self, inner: Denoiser, percentile: float = 0.995):
        super().__init__()
        self.inner = inner
        self.percentile = percentile

    def forward(self, x: Tensor, sigma: Tensor, cond) -> Tensor:
        return dynamic_threshold(self.inner(x, sigma, cond), self.percentile)
