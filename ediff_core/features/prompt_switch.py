"""Prompt switching (eDiff-I Fig. 4, §1): denoise with prompt A for σ ≥ σ_switch and prompt B below.

Switching late (low σ) barely changes the image, switching early changes it completely: the text
decides the layout at high noise and is mostly ignored at low noise, the observation behind the
expert ensemble (§4.1). ``prompt_switch_sweep`` measures that curve on any model.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np
from PIL import Image

from ..core.feature import Feature
from ..core.guidance import GuidedCond
from ..core.request import GenerationRequest

if TYPE_CHECKING:
    from ..pipeline import EDiffPipeline


class PromptSwitch(Feature):
    """``switch_prompt`` conditions the base stage for σ < ``switch_sigma``, and the SR stages when the
    switch happened before the base stage's last step (they follow the prompt in force at its end)."""

    @classmethod
    def for_request(cls, pipe: "EDiffPipeline", req: GenerationRequest) -> Optional["PromptSwitch"]:
        return cls() if req.switch_prompt is not None else None

    def at_sigma(self, req: GenerationRequest, sigma: float, gc: GuidedCond, prompts: dict[str, GuidedCond]) -> GuidedCond:
        switched = prompts.get("switch_prompt")  # absent at the SR stages: they switched (or not) in for_sr
        return switched if switched is not None and sigma < req.switch_sigma else gc

    def for_sr(self, req: GenerationRequest, gc: GuidedCond, prompts: dict[str, GuidedCond]) -> GuidedCond:
        return prompts["switch_prompt"] if req.switch_sigma > req.sigma_min else gc


@dataclass
class SwitchSweep:
    """Images of prompt A switched to prompt B at each σ, and how much each differs from A alone.

    ``change[i]`` is the mean absolute pixel difference (0..1) between the base-stage image switched
    at ``sigmas[i]`` and the one with no switch (the stage where switching acts). ``reference`` is the
    same figure for prompt B throughout, so change / reference is the share of the full change.
    """

    sigmas: list[float]
    images: list[Image.Image]  # final images, one per switch σ
    base_images: list[Image.Image]  # base-stage images, one per switch σ
    change: list[float]
    no_switch: Image.Image  # prompt A throughout (final)
    prompt_b_only: Image.Image  # prompt B throughout (final)
    reference: float


def image_change(a: Image.Image, b: Image.Image) -> float:
    """Mean absolute pixel difference of two images, in [0, 1]."""
    x = np.asarray(a.convert("RGB"), np.float32)
    y = np.asarray(b.convert("RGB"), np.float32)
    if x.shape != y.shape:
        raise ValueError(f"images differ in size: {a.size} and {b.size}")
    return float(np.abs(x - y).mean() / 255)


def prompt_switch_sweep(pipe: "EDiffPipeline", prompt_a: str, prompt_b: str, sigmas: Sequence[float], seed: int = 0, **request: object) -> SwitchSweep:
    """Generates A→B switched at each σ in ``sigmas`` (plus A alone and B alone) with one seed.

    ``request`` holds further ``GenerationRequest`` fields (steps, guidance, sampler, ...).
    """
    base = GenerationRequest(prompt_a, seed=seed, **request)
    only_a = pipe(base)
    only_b = pipe(replace(base, prompt=prompt_b))
    stage = pipe.base.name
    ref_a = only_a.stage_images[stage][0]
    results = [pipe(replace(base, switch_prompt=prompt_b, switch_sigma=float(s))) for s in sigmas]
    return SwitchSweep(
        sigmas=[float(s) for s in sigmas],
        images=[r.images[0] for r in results],
        base_images=[r.stage_images[stage][0] for r in results],
        change=[image_change(r.stage_images[stage][0], ref_a) for r in results],
        no_switch=only_a.images[0],
        prompt_b_only=only_b.images[0],
        reference=image_change(only_b.stage_images[stage][0], ref_a),
    )
