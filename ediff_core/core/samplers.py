"""Samplers for the probability-flow ODE (EDM, Karras et al. 2022, Algorithm 1; eDiff-I §3).

A sampler is a pure generator over (x, sigmas): it yields each point it needs denoised as a
``Step`` and receives D(x, σ) back, and returns the final sample. ``sample()`` drives one with a
denoiser; the model server drives many at once to batch their U-Net calls across requests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Generator

import torch
from torch import Tensor

from .conditioning import Denoiser


@dataclass
class Step:
    """A denoiser evaluation a sampler asks for: D(x, sigma)."""

    index: int  # step i of the schedule (0-based)
    sigma: float  # σ at which x is to be denoised
    x: Tensor  # (B, C, H, W)


SamplerProgram = Generator[Step, Tensor, Tensor]


def karras_sigmas(steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> Tensor:
    """EDM's schedule (Eq. 5): ``steps`` decreasing σ followed by a final 0; float64."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1; got {steps}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max; got {sigma_min}, {sigma_max}")
    if steps == 1:
        return torch.tensor([sigma_max, 0.0], dtype=torch.float64)
    i = torch.arange(steps, dtype=torch.float64)
    s = (sigma_max ** (1 / rho) + i / (steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([s, s.new_zeros(1)])


def euler(x: Tensor, sigmas: Tensor) -> SamplerProgram:
    """First-order Euler steps of dx/dσ = (x − D(x, σ))/σ."""
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        d = (x - (yield Step(i, s, x))) / s
        x = x + d * (s_next - s)
    return x


def heun(x: Tensor, sigmas: Tensor) -> SamplerProgram:
    """EDM's 2nd-order Heun sampler (Algorithm 1); the last step, to σ = 0, is Euler."""
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        d = (x - (yield Step(i, s, x))) / s
        x_next = x + d * (s_next - s)
        if s_next > 0:
            d_next = (x_next - (yield Step(i, s_next, x_next))) / s_next
            x_next = x + (s_next - s) * (d + d_next) / 2
        x = x_next
    return x


def dpmpp_2m(x: Tensor, sigmas: Tensor) -> SamplerProgram:
    """DPM-Solver++(2M) (Lu et al. 2022) in σ-time, as in k-diffusion; one NFE per step."""
    old_denoised = None
    h_last = None
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = yield Step(i, s, x)
        if s_next == 0:
            x = denoised
            break
        t, t_next = -torch.tensor(s).log(), -torch.tensor(s_next).log()
        h = float(t_next - t)
        if old_denoised is None:
            d = denoised
        else:
            r = h_last / h
            d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
        x = (s_next / s) * x - torch.expm1(torch.tensor(-h)).item() * d
        old_denoised, h_last = denoised, h
    return x


@dataclass(frozen=True)
class Sampler:
    """A sampler program and what it costs: the one entry a new sampler adds to ``SAMPLERS``."""

    program: Callable[[Tensor, Tensor], SamplerProgram]
    nfe: Callable[[int], int]  # denoiser evaluations over a karras_sigmas(steps) schedule


# Every name a user may type (CLI choices, the API's schema and the UI's dropdown read this).
SAMPLERS: dict[str, Sampler] = {
    "euler": Sampler(euler, lambda steps: steps),
    "heun": Sampler(heun, lambda steps: 2 * steps - 1),  # two evaluations per step but the last
    "dpmpp_2m": Sampler(dpmpp_2m, lambda steps: steps),
}


def nfe(sampler: str, steps: int) -> int:
    """Denoiser evaluations a sampler makes over a ``karras_sigmas(steps)`` schedule."""
    return _lookup(sampler).nfe(steps)


def get_sampler(name: str) -> Callable[[Tensor, Tensor], SamplerProgram]:
    return _lookup(name).program


def _lookup(name: str) -> Sampler:
    if name not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}; got {name!r}")
    return SAMPLERS[name]


def sample(
    sampler: str,
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    cond: object,
    callback: Callable[[Step, Tensor], None] | None = None,
) -> Tensor:
    """Runs a sampler to completion: x starts at σ = sigmas[0] (noise × sigmas[0])."""
    run = sample_steps(sampler, denoiser, x, sigmas, cond)
    try:
        while True:
            step, denoised = next(run)
            if callback is not None:
                callback(step, denoised)
    except StopIteration as done:
        return done.value


def sample_steps(
    sampler: str,
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    cond: object,
) -> Generator[tuple[Step, Tensor], None, Tensor]:
    """``sample`` as a generator: yields (step, denoised) after every evaluation, returns the sample.

    ``cond`` is the conditioning, or a function of the step's σ (float) giving the one in force
    there (prompt switching, a style window)."""
    program = get_sampler(sampler)(x, sigmas)
    try:
        step = next(program)
        while True:
            sigma = torch.full((step.x.shape[0],), step.sigma, dtype=torch.float32, device=step.x.device)
            denoised = denoiser(step.x, sigma, cond(step.sigma) if callable(cond) else cond)
            yield step, denoised
            step = program.send(denoised)
    except StopIteration as done:
        return done.value


def initial_noise(seeds: list[int], shape: tuple[int, int, int], sigma_max: float, device: torch.device | str = "cpu") -> Tensor:
    """x_T = σ_max·ε with ε drawn per sample from its own seed (batch of N = N runs of 1)."""
    eps = [torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    return (torch.stack(eps) * sigma_max).to(device)
