"""Style transfer (eDiff-I §5.3, Fig. 16): condition on the CLIP image embedding of a reference.

The reference goes through the same CLIP image encoder as in training. Two controls, both
applied by the ``Style`` feature of ``EDiffPipeline``:

- ``style_strength`` scales the image embedding (0 = off, exactly as if no reference was given);
- ``style_sigma = (lo, hi)`` keeps the embedding only while σ ∈ [lo, hi]; outside the window the
  embedding is dropped exactly as in training-time dropout (App. A). Because layout is decided at
  high σ and detail at low σ (§1, Fig. 3), a low window restyles the texture of an image whose
  layout the text chose, and a high window lets the reference steer the composition.

Both combine with text (the image token sits beside the text tokens in cross-attention, §4.2)
and with paint-with-words (which only biases the text-token columns, §4.3).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..core.conditioning import CLIP_IMAGE, Cond
from ..core.feature import Feature
from ..core.guidance import GuidedCond
from ..core.images import checked_image
from ..core.request import GenerationRequest

if TYPE_CHECKING:
    from ..pipeline import EDiffPipeline

def reference_tensor(image: Image.Image, field: str = "style_image") -> Tensor:
    """A reference image as (1, 3, H, W) floats in [0, 1]; alpha is composited on white."""
    rgba = checked_image(image, field, min_side=8).convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    a = np.asarray(Image.alpha_composite(white, rgba).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(a).permute(2, 0, 1)[None]


def style_active(sigma: float, window: tuple[float, float] | None) -> bool:
    """Whether the reference conditions the step at ``sigma`` (the rule of ``Style.at_sigma``)."""
    return window is None or window[0] <= sigma <= window[1]


def style_steps(sigmas: Sequence[float], window: tuple[float, float] | None) -> list[bool]:
    """Per step of a schedule, whether the style is on: for UIs to show what a window covers."""
    return [style_active(float(s), window) for s in sigmas]


class Style(Feature):
    """The reference's CLIP image embedding, times ``style_strength``, on every prompt field; off outside ``style_sigma``."""

    @classmethod
    def for_request(cls, pipe: "EDiffPipeline", req: GenerationRequest) -> Optional["Style"]:
        return cls() if req.style_image is not None and req.style_strength > 0 else None

    def __init__(self) -> None:
        self.embed: Tensor | None = None  # (B, D) the reference's embedding times the strength, encoded once a request

    def condition(self, pipe: "EDiffPipeline", req: GenerationRequest, field: str, cond: Cond, notes: dict) -> Cond:
        if self.embed is None:
            images = reference_tensor(req.style_image).expand(cond.batch_size, -1, -1, -1)
            self.embed = pipe.encoders.clip_image.encode_image(images).float().to(cond.device) * req.style_strength
        keep = cond.keep.clone()
        keep[:, CLIP_IMAGE] = True
        return replace(cond, image_embed=self.embed, keep=keep)

    def at_sigma(self, req: GenerationRequest, sigma: float, gc: GuidedCond, prompts: dict[str, GuidedCond]) -> GuidedCond:
        if style_active(sigma, req.style_sigma):
            return gc
        keep = torch.ones_like(gc.cond.keep)
        keep[:, CLIP_IMAGE] = False  # dropped as in training-time dropout (App. A)
        return GuidedCond(gc.cond.with_keep(keep), gc.uncond, gc.scale)
