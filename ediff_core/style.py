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

from .request import RequestError

MAX_REFERENCE_PIXELS = 4096 * 4096
# 8-bit modes PIL converts to RGBA faithfully; others (16-bit, float, LAB, HSV) are refused.
_CONVERTIBLE_MODES = {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"}


def checked_image(image, field: str, max_pixels: int = MAX_REFERENCE_PIXELS, min_side: int = 1) -> Image.Image:
    """A user image as PIL (still in its own mode), refusing non-images, huge images and modes
    that do not convert to 8-bit RGBA faithfully.

    The size is checked on the header before any pixel is decoded or converted. ``image`` may be a
    PIL image or an (H, W, 3|4) uint8 array (what Gradio hands over).
    """
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
            raise RequestError(field, f"an array image must be (H, W), (H, W, 3) or (H, W, 4) uint8; got {image.dtype} {image.shape}")
        if image.size // (image.shape[2] if image.ndim == 3 else 1) > max_pixels:
            raise RequestError(field, f"at most {max_pixels} pixels; got {image.shape[1]}x{image.shape[0]}")
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise RequestError(field, f"must be an image; got {type(image).__name__}")
    w, h = image.size
    if w * h > max_pixels:
        raise RequestError(field, f"at most {max_pixels} pixels; got {w}x{h} ({w * h}); downscale it first")
    if min(w, h) < min_side:
        raise RequestError(field, f"must be at least {min_side}x{min_side} pixels; got {w}x{h}")
    if image.mode not in _CONVERTIBLE_MODES:
        raise RequestError(field, f"image mode '{image.mode}' is not supported; save it as an 8-bit RGB or RGBA PNG")
    return image


def reference_tensor(image: Image.Image, field: str = "style_image") -> Tensor:
    """A reference image as (1, 3, H, W) floats in [0, 1]; alpha is composited on white."""
    rgba = checked_image(image, field, MAX_REFERENCE_PIXELS, min_side=8).convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    a = np.asarray(Image.alpha_composite(white, rgba).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(a).permute(2, 0, 1)[None]


def style_active(sigma: float, window: tuple[float, float] | None) -> bool:
    """Whether the reference conditions the step at ``sigma`` (the rule of ``EDiffPipeline._at_sigma``)."""
    return window is None or window[0] <= sigma <= window[1]


def style_steps(sigmas: Sequence[float], window: tuple[float, float] | None) -> list[bool]:
    """Per step of a schedule, whether the style is on: for UIs to show what a window covers."""
    return [style_active(float(s), window) for s in sigmas]
