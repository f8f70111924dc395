"""EDM preconditioning (eDiff-I §3; Karras et al. 2022, Table 1).

D(x; e, σ) = c_skip(σ)·x + c_out(σ)·F_θ(c_in(σ)·x; e, c_noise(σ)).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

SIGMA_DATA = 0.5  # σ_d, the data standard deviation assumed by EDM.


def c_skip(sigma: Tensor, sigma_data: float = SIGMA_DATA) -> Tensor:
    return sigma_data**2 / (sigma**2 + sigma_data**2)


def c_out(sigma: Tensor, sigma_data: float = SIGMA_DATA) -> Tensor:
    return sigma * sigma_data / (sigma**2 + sigma_data**2).sqrt()


def c_in(sigma: Tensor, sigma_data: float = SIGMA_DATA) -> Tensor:
    return 1 / (sigma**2 + sigma_data**2).sqrt()


def c_noise(sigma: Tensor) -> Tensor:
    return sigma.log() / 4


class EDMPrecond(nn.Module):
    """Wraps a raw network ``F(x_in, c_noise, cond)`` into the denoiser ``D(x, σ, cond) -> x0``.

    Args:
        net: the raw network F_θ; takes the scaled input, c_noise of shape (B,) and the condition.
        sigma_data: σ_d of the training data (0.5 for images in [-1, 1]).
    """

    def __init__(self, net: nn.Module, sigma_data: float = SIGMA_DATA) -> None:
        super().__init__()
        self.net = net
        self.sigma_data = sigma_data

    def forward(self, x: Tensor, sigma: Tensor, cond) -> Tensor:
        sigma = sigma.to(torch.float32).reshape(-1)
        s = sigma.reshape(-1, 1, 1, 1)
        F = self.net(c_in(s, self.sigma_data) * x, c_noise(sigma), cond)
        return c_skip(s, self.sigma_data) * x + c_out(s, self.sigma_data) * F.to(x.dtype)
