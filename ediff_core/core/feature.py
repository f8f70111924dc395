"""The one protocol through which §4's controls plug into generation.

``EDiffPipeline.generate`` asks each class of ``EDiffPipeline.features`` for an instance for the
request (``for_request``; ``None``: the request does not use it), then consults the instances in
order at four points of the recipe:

1. ``condition``: each prompt field once it is encoded (``"prompt"``, then ``"switch_prompt"``),
   e.g. paint-with-words' token maps (§4.3) or the style reference's CLIP image embedding (§4.4);
2. ``at_sigma``: a stage's conditioning in force at σ, e.g. the prompt switch (Fig. 4, base stage)
   or the style window (every stage);
3. ``for_sr``: what a super-resolution stage conditions on (the base stage's last conditioning);
4. ``wrap``: around every denoiser evaluation, e.g. recording cross-attention (Fig. 3);

and ``result`` adds fields to the ``GenerationResult`` (``attention``). Every hook defaults to
passing its input through, so a feature overrides only the points it acts at.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, Protocol

from .conditioning import Cond
from .guidance import GuidedCond
from .request import GenerationRequest

if TYPE_CHECKING:
    from ..pipeline import EDiffPipeline, Evaluate


class Feature(Protocol):
    """One control of generation, for one request (see the module docstring for the order)."""

    @classmethod
    def for_request(cls, pipe: "EDiffPipeline", req: GenerationRequest) -> Optional["Feature"]:
        """This feature for ``req`` (validated, defaults filled), or ``None`` when ``req`` does not use it."""
        ...

    def condition(self, pipe: "EDiffPipeline", req: GenerationRequest, field: str, cond: Cond, notes: dict) -> Cond:
        """The encoded conditioning of the request's prompt field ``field``; warnings go to ``notes``."""
        return cond

    def at_sigma(self, req: GenerationRequest, sigma: float, gc: GuidedCond, prompts: dict[str, GuidedCond]) -> GuidedCond:
        """A stage's conditioning at σ, given the one in force so far and the stage's conditioning per
        prompt field (the base stage: every encoded field; an SR stage: only ``prompt``, its ``for_sr``)."""
        return gc

    def for_sr(self, req: GenerationRequest, gc: GuidedCond, prompts: dict[str, GuidedCond]) -> GuidedCond:
        """What the super-resolution stages condition on (before their low-resolution input is added)."""
        return gc

    def wrap(self, evaluate: "Evaluate") -> "Evaluate":
        """An ``Evaluate`` hook around every denoiser evaluation of the cascade."""
        return evaluate

    def result(self) -> dict[str, Any]:
        """Fields of the ``GenerationResult`` this feature fills, once sampling has ended."""
        return {}
