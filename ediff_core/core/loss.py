"""EDM training loss (eDiff-I §3): E‖D(x + σε; e, σ) − x‖² · λ(σ), ln σ ~ N(P_mean, P_std²).

An expert owns a σ interval; its loss samples the same lognormal truncated to that interval
(§4.1: each child is fine-tuned on its share of p(σ)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .precond import SIGMA_DATA

P_MEAN = -1.2
P_STD = 1.2


def _normal_cdf(z: Tensor) -> Tensor:
    return 0.5 * (1 + torch.erf(z / math.sqrt(2)))


def _normal_icdf(u: Tensor) -> Tensor:
    return math.sqrt(2) * torch.erfinv(2 * u - 1)


def loss_weight(sigma: Tensor, sigma_data: float = SIGMA_DATA) -> Tensor:
    """λ(σ) = (σ² + σ_d²) / (σ·σ_d)²."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


@dataclass
class EDMLoss:
    """Weighted denoising loss; ``interval`` restricts σ to [lo, hi) (None = unbounded).

    Sampling is inverse-CDF on the lognormal, so the truncated distribution is exact.
    """

    P_mean: float = P_MEAN
    P_std: float = P_STD
    sigma_data: float = SIGMA_DATA
    interval: tuple[float, float | None] = (0.0, None)

    def sample_sigma(self, n: int, generator: torch.Generator | None = None, device=None) -> Tensor:
        lo, hi = self.interval
        u_lo = 0.0 if lo <= 0 else float(_normal_cdf(torch.tensor((math.log(lo) - self.P_mean) / self.P_std)))
        u_hi = 1.0 if hi is None else float(_normal_cdf(torch.tensor((math.log(hi) - self.P_mean) / self.P_std)))
        u = torch.rand(n, generator=generator, dtype=torch.float64) * (u_hi - u_lo) + u_lo
        u = u.clamp(1e-12, 1 - 1e-12)
        sigma = (self.P_mean + self.P_std * _normal_icdf(u)).exp()
        return sigma.to(torch.float32).to(device)

    def __call__(self, denoiser, x0: Tensor, cond, generator: torch.Generator | None = None, rows: tuple[int, int] | None = None) -> Tensor:
        """Returns the per-sample loss, shape (B,). ``rows``: (offset, global batch) of these B rows
        in a data-parallel global batch; σ and ε are drawn for the global batch and sliced, so the
        ranks together draw what one process would."""
        n = x0.shape[0]
        offset, total = rows or (0, n)
        sigma = self.sample_sigma(total, generator, x0.device)[offset : offset + n]
        noise = torch.randn((total, *x0.shape[1:]), generator=generator, device="cpu")[offset : offset + n].to(x0.device)
        D = denoiser(x0 + sigma.reshape(-1, 1, 1, 1) * noise, sigma, cond)
        per = ((D - x0) ** 2).flatten(1).mean(1)
        return loss_weight(sigma, self.sigma_data) * per
