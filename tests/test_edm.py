"""EDM preconditioning, loss and samplers against the reference formulas (eDiff-I §3)."""

import math

import pytest
import torch

from ediff_core.core.loss import EDMLoss, loss_weight
from ediff_core.core.precond import EDMPrecond, c_in, c_noise, c_out, c_skip
from ediff_core.core.samplers import SAMPLERS, initial_noise, karras_sigmas, nfe, sample


def test_preconditioning_matches_edm_table1():
    s = torch.tensor([0.002, 0.1, 0.5, 1.0, 80.0], dtype=torch.float64)
    sd = 0.5
    assert torch.allclose(c_skip(s), sd**2 / (s**2 + sd**2))
    assert torch.allclose(c_out(s), s * sd / torch.sqrt(s**2 + sd**2))
    assert torch.allclose(c_in(s), 1 / torch.sqrt(s**2 + sd**2))
    assert torch.allclose(c_noise(s), torch.log(s) / 4)


def test_precond_wraps_raw_network():
    seen = {}

    class F(torch.nn.Module):
        def forward(self, x_in, cn, cond):
            seen["x_in"], seen["cn"] = x_in, cn
            return torch.ones_like(x_in) * 3

    D = EDMPrecond(F())
    x = torch.randn(2, 3, 4, 4)
    sigma = torch.tensor([0.3, 7.0])
    out = D(x, sigma, None)
    s = sigma.reshape(-1, 1, 1, 1)
    assert torch.allclose(seen["x_in"], x / torch.sqrt(s**2 + 0.25))
    assert torch.allclose(seen["cn"], sigma.log() / 4)
    assert torch.allclose(out, 0.25 / (s**2 + 0.25) * x + s * 0.5 / torch.sqrt(s**2 + 0.25) * 3)


def test_loss_weight_and_sigma_distribution():
    s = torch.tensor([0.1, 1.0, 10.0])
    assert torch.allclose(loss_weight(s), (s**2 + 0.25) / (s * 0.5) ** 2)
    ln = EDMLoss().sample_sigma(200_000, torch.Generator().manual_seed(0)).log()
    assert abs(ln.mean().item() + 1.2) < 0.02 and abs(ln.std().item() - 1.2) < 0.02


def test_truncated_loss_stays_in_interval_with_the_right_shape():
    from scipy.stats import lognorm

    lo, hi = 0.3, 2.0
    s = EDMLoss(interval=(lo, hi)).sample_sigma(100_000, torch.Generator().manual_seed(1))
    assert s.min() >= lo * (1 - 1e-5) and s.max() <= hi * (1 + 1e-5)
    d = lognorm(s=1.2, scale=math.exp(-1.2))
    median = d.ppf((d.cdf(lo) + d.cdf(hi)) / 2)
    assert abs(s.median().item() - median) / median < 0.02
    top = EDMLoss(interval=(9.6, None)).sample_sigma(10_000, torch.Generator().manual_seed(2))
    assert top.min() >= 9.6 * (1 - 1e-5)


def test_loss_is_zero_for_the_exact_denoiser_of_a_point_mass():
    x0 = torch.full((4, 3, 8, 8), 0.3)
    per = EDMLoss()(lambda x, s, c: x0, x0, None, torch.Generator().manual_seed(0))
    assert per.shape == (4,) and torch.all(per == 0)


def _gaussian_denoiser(mu: float, std: float):
    """Exact D(x, σ) = E[x0 | x] for data x0 ~ N(mu, std²) per pixel."""

    def D(x, sigma, cond):
        s2 = sigma.reshape(-1, 1, 1, 1).double() ** 2
        return ((std**2 * x.double() + s2 * mu) / (std**2 + s2)).to(x.dtype)

    return D


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_samplers_reproduce_gaussian_data(name):
    mu, std = 0.3, 0.5
    x = initial_noise(list(range(512)), (1, 8, 8), 80.0).double()
    steps = 300 if name == "euler" else 64
    out = sample(name, _gaussian_denoiser(mu, std), x, karras_sigmas(steps), None)
    assert abs(out.mean().item() - mu) < 0.01
    assert abs(out.std().item() - std) / std < 0.02


@pytest.mark.parametrize("name,order", [("euler", 1), ("heun", 2), ("dpmpp_2m", 2)])
def test_sampler_convergence_order(name, order):
    """Halving the step size divides the error by ~2^order."""
    mu, std = 0.3, 0.5
    x = initial_noise(list(range(64)), (1, 4, 4), 80.0).double()
    # The exact probability-flow ODE map for Gaussian data: x(0) = mu + (x_T - mu)·std/√(std² + σ_T²).
    exact = mu + (x - mu) * std / (std**2 + 80.0**2) ** 0.5
    err = [(sample(name, _gaussian_denoiser(mu, std), x, karras_sigmas(n), None) - exact).abs().max().item() for n in (32, 64)]
    ratio = err[0] / err[1]
    assert ratio > 2 ** order * 0.7, (name, err)


def test_karras_schedule_and_nfe():
    s = karras_sigmas(10, 0.002, 80.0)
    assert len(s) == 11 and s[0] == 80.0 and abs(s[-2] - 0.002) < 1e-12 and s[-1] == 0
    assert torch.all(s[:-1] > s[1:])
    assert nfe("heun", 10) == 19 and nfe("euler", 10) == 10 and nfe("dpmpp_2m", 10) == 10
    with pytest.raises(ValueError, match="steps must be at least 1"):
        karras_sigmas(0)


def test_sampler_counts_its_evaluations():
    calls = []
    D = _gaussian_denoiser(0.0, 0.5)
    for name in SAMPLERS:
        calls.clear()
        sample(name, lambda x, s, c: (calls.append(1), D(x, s, c))[1], torch.randn(1, 1, 2, 2), karras_sigmas(7), None)
        assert len(calls) == nfe(name, 7), name


def test_per_sample_noise_is_batch_independent():
    a = initial_noise([3, 4, 5], (3, 8, 8), 80.0)
    b = torch.cat([initial_noise([s], (3, 8, 8), 80.0) for s in (3, 4, 5)])
    assert torch.equal(a, b)
