"""Style transfer (eDiff-I §5.3, Fig. 16): condition on the CLIP image embedding of a reference.

The reference goes through the same CLIP image encoder as in training. Two controls, both
applied by ``EDiffPipeline``:

- ``style_strength`` scales the image embedding (0 = off, exactly as if no reference was given);
- ``style_sigma = (lo, hi)`` keeps the embedding only while σ ∈ [lo, hi]; outside the window the
  embedding is dropped exactly as in training-time dropout (App. A). Because layout is decided at
  high σ and detail at low σ (§1, Fig. 3), a low window restyles the texture of an image whose
  layout the text chose, and a high window lets the reference steer the composition.

Both combine with text (the image token sits beside the text tokens in cross-attention, §4.2)
and with paint-with-words (which only biases the text-token columns, §4.3).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..core.images import checked_image

def reference_tensor(image: Image.Image, field: str = "style_image") -> Tensor:
    """A reference image as (1, 3, H, W) floats in [0, 1]; alpha is composited on white."""
    rgba = checked_image(image, field, min_side=8).convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    a = np.asarray(Image.alpha_composite(white, rgba).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(a).permute(2, 0, 1)[None]


def style_active(sigma: float, window: tuple[float, float] | None) -> bool:
    """Whether the reference conditions the step at ``sigma`` (the rule of ``EDiffPipeline._at_sigma``)."""
    return window is None or window[0] <= sigma <= window[1]


def style_steps(sigmas: Sequence[float], window: tuple[float, float] | None) -> list[bool]:
    """Per step of a schedule, whether the style is on: for UIs to show what a window covers."""
    return [style_active(float(s), window) for s in sigmas]
