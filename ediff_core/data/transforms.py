"""From an image file to a training sample: EXIF orientation, RGB, centre crop, Lanczos resize.

Every dataset layout ends here, so a Shapes World PNG, a folder of photos and a WebDataset
shard give the same tensors: the SR-resolution image, the base-resolution image and a degraded
copy of it for super-resolution training (§4.2).
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError
from torch import Tensor


class BadSample(Exception):
    """A sample that training skips (and counts): ``reason`` says why, e.g. 'truncated image'."""

    def __init__(self, key: str, reason: str):
        super().__init__(f"{key}: {reason}")
        self.key, self.reason = key, reason


def to_tensor(img: Image.Image) -> Tensor:
    """(3, H, W) in [-1, 1]."""
    return torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)


def degrade(img: Image.Image, rng: random.Random) -> Image.Image:
    """Random low-resolution degradations for SR training (§4.2: blur, JPEG, noise)."""
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.8)))
    if rng.random() < 0.3:
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=rng.randint(50, 95))
        img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    if rng.random() < 0.3:
        a = np.asarray(img, dtype=np.float32) + np.random.default_rng(rng.randrange(2**31)).normal(0, rng.uniform(1, 6), (img.height, img.width, 3))
        img = Image.fromarray(a.clip(0, 255).astype(np.uint8))
    return img


def decode_image(source: bytes | Path, key: str, min_side: int) -> Image.Image:
    """Decodes fully (a truncated file fails here, not mid-batch), applies the EXIF orientation
    and converts to RGB; raises ``BadSample`` for anything unreadable or under ``min_side``."""
    try:
        img = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        img.load()
        img = ImageOps.exif_transpose(img)
    except FileNotFoundError:
        raise BadSample(key, "image file missing") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise BadSample(key, f"unreadable image ({str(e).splitlines()[0][:80] if str(e) else type(e).__name__})") from None
    if min(img.size) < min_side:
        raise BadSample(key, f"image {img.width}x{img.height} under the minimum side {min_side}")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        background = Image.new("RGB", img.size, (255, 255, 255))  # transparency over white
        background.paste(img.convert("RGBA"), mask=img.convert("RGBA").getchannel("A"))
        return background
    return img.convert("RGB")


def centre_square(img: Image.Image, side: int) -> Image.Image:
    """The largest centred square, Lanczos-resized to ``side``."""
    w, h = img.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return img.resize((side, side), Image.LANCZOS, box=(left, top, left + s, top + s))


def training_sample(img: Image.Image, caption: str, key: str, base: int, sr: int, rng: random.Random) -> dict:
    """The tensors one training step needs from one RGB image (any size, any aspect)."""
    small = centre_square(img, base)
    return {
        "image": to_tensor(centre_square(img, sr)),
        "base": to_tensor(small),
        "degraded": to_tensor(degrade(small, rng)),
        "caption": caption,
        "key": key,
    }


def captions_of(value, key: str) -> list[str]:
    """A caption field (a string or a list of strings) as a list of non-empty captions."""
    items = value if isinstance(value, list) else [value]
    out = [c.strip() for c in items if isinstance(c, str) and c.strip()]
    if not out:
        raise BadSample(key, "missing or empty caption")
    return out
