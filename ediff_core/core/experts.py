"""Ensemble of expert denoisers (eDiff-I §4.1, Appendix B).

p(σ) is the training lognormal ln σ ~ N(P_mean, P_std²). Node E^l_i is the model fine-tuned on
the i-th of 2^l equal-probability intervals (i = 0 is the lowest σ). The final base system keeps
splitting only the outermost nodes: a high-noise leaf, a low-noise leaf and one complement model
for everything in between. Every sample is routed by its own σ, never by step index.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
import torch
from torch import Tensor, nn

from .loss import P_MEAN, P_STD


@dataclass(frozen=True)
class Interval:
    """σ ∈ [lo, hi); ``hi = math.inf`` for the top interval."""

    lo: float
    hi: float

    def contains(self, sigma: Tensor) -> Tensor:
        return (sigma >= self.lo) & (sigma < self.hi)

    def as_loss_interval(self) -> tuple[float, float | None]:
        return (self.lo, None if math.isinf(self.hi) else self.hi)


def sigma_quantile(q: float, P_mean: float = P_MEAN, P_std: float = P_STD) -> float:
    """σ below which a fraction q of p(σ) lies: exp(P_mean + P_std·Φ⁻¹(q))."""
    if q <= 0:
        return 0.0
    if q >= 1:
        return math.inf
    return math.exp(P_mean + P_std * NormalDist().inv_cdf(q))


def node(level: int, index: int, P_mean: float = P_MEAN, P_std: float = P_STD) -> Interval:
    """The σ interval of E^l_i: the index-th of 2^level equal-probability intervals."""
    if level < 0 or not 0 <= index < 2**level:
        raise ValueError(f"node(level={level}, index={index}) needs level >= 0 and 0 <= index < 2**level")
    n = 2**level
    return Interval(sigma_quantile(index / n, P_mean, P_std), sigma_quantile((index + 1) / n, P_mean, P_std))


@dataclass(frozen=True)
class ExpertSpec:
    """One expert: its name, σ interval and optional guidance scale (None = the request's)."""

    name: str
    interval: Interval
    guidance: float | None = None


def three_expert_specs(high_level: int = 9, low_level: int = 3) -> list[ExpertSpec]:
    """The paper's base system (config D): E^low_0, the complement model, E^high_(2^high−1)."""
    low = node(low_level, 0)
    high = node(high_level, 2**high_level - 1)
    if not low.hi < high.lo:
        raise ValueError(f"leaves E^{low_level}_0 and E^{high_level}_{2**high_level - 1} overlap")
    return [
        ExpertSpec(f"E{low_level}_0", low),
        ExpertSpec(f"complement_{low_level}_{high_level}", Interval(low.hi, high.lo)),
        ExpertSpec(f"E{high_level}_{2**high_level - 1}", high),
    ]


def check_tiling(specs: list[ExpertSpec]) -> None:
    """Raises unless the intervals, sorted, tile [0, ∞) with no gap or overlap."""
    ivs = sorted((s.interval for s in specs), key=lambda iv: iv.lo)
    if not ivs or ivs[0].lo != 0.0 or not math.isinf(ivs[-1].hi):
        raise ValueError("expert σ intervals must start at 0 and end at infinity")
    for a, b in zip(ivs, ivs[1:]):
        if a.hi != b.lo:
            raise ValueError(f"expert σ intervals leave a gap or overlap between {a} and {b}")


class ExpertEnsemble(nn.Module):
    """A denoiser ``D(x, σ, cond)`` that runs, for each sample, the one expert owning its σ.

    One batched call per expert present in the batch; inference cost equals one model's.
    """

    def __init__(self, experts: list[nn.Module], specs: list[ExpertSpec]):
        super().__init__()
        if len(experts) != len(specs):
            raise ValueError(f"{len(experts)} experts but {len(specs)} specs")
        check_tiling(specs)
        self.experts = nn.ModuleList(experts)
        self.specs = list(specs)

    def expert_index(self, sigma: Tensor) -> Tensor:
        """(B,) index of the expert that owns each σ."""
        idx = torch.full(sigma.shape, -1, dtype=torch.long, device=sigma.device)
        for i, s in enumerate(self.specs):
            idx[s.interval.contains(sigma)] = i
        return idx

    def guidance(self, sigma: Tensor, default: Tensor) -> Tensor:
        """Per-sample guidance: the owning expert's scale where it has one, else ``default``."""
        out = default.clone()
        for s in self.specs:
            if s.guidance is not None:
                out[s.interval.contains(sigma)] = s.guidance
        return out

    def forward(self, x: Tensor, sigma: Tensor, cond) -> Tensor:
        sigma = sigma.reshape(-1).expand(x.shape[0]) if sigma.numel() == 1 else sigma
        idx = self.expert_index(sigma)
        if (idx == idx[0]).all():
            return self.experts[int(idx[0])](x, sigma, cond)
        out = torch.empty_like(x)
        for i in idx.unique().tolist():
            m = idx == i
            out[m] = self.experts[i](x[m], sigma[m], cond.index(m))
        return out
