"""Style transfer (eDiff-I §5.3, Fig. 16): condition on the CLIP image embedding of a reference.

The reference goes through the same CLIP image encoder as in training; ``style_strength``
scales its embedding and ``style_sigma`` limits it to a σ window (see ``EDiffPipeline``).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .request import RequestError

MAX_REFERENCE_PIXELS = 4096 * 4096


def reference_tensor(image: Image.Image, field: str = "style_image") -> Tensor:
    """A reference image as (1, 3, H, W) floats in [0, 1]; alpha is composited on white."""
    if not isinstance(image, Image.Image):
        raise RequestError(field, "must be an image")
    if image.width * image.height > MAX_REFERENCE_PIXELS:
        raise RequestError(field, f"at most {MAX_REFERENCE_PIXELS} pixels; got {image.width}x{image.height}")
    if image.width < 8 or image.height < 8:
        raise RequestError(field, f"must be at least 8x8 pixels; got {image.width}x{image.height}")
    if image.mode in ("RGBA", "LA", "P"):
        rgba = image.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(bg, rgba)
    a = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(a).permute(2, 0, 1)[None]
