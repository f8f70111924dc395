"""Images in and out: limits, checks of untrusted images, tensor → PIL, PNG metadata.

A low module: it imports only torch, numpy, PIL and ``request`` (for ``RequestError``).

In: every user image (style reference §5.3, paint-with-words sketch §4.3, an upload to the server)
is checked on its header (size, mode, format) before any pixel is decoded or converted.
Out: a PNG carries the request's settings, the seed and the experts per step (§4.1), never wall-clock
timings, so the same model, settings and seed give byte-identical files.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from PIL.PngImagePlugin import PngInfo
from torch import Tensor

from .request import RequestError

# ---------------------------------------------------------------- limits

MAX_PIXELS = 4096 * 4096  # width × height of any user image: style reference, sketch, upload
MAX_UPLOAD_BYTES = 8 * 1024 * 1024  # an encoded upload, before decoding
MAX_UPLOAD_SIDE = 8192
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP")  # as the docs say; GIF and BMP are refused by name
# 8-bit modes PIL converts to RGBA faithfully; others (16-bit, float, LAB, HSV) are refused.
_CONVERTIBLE_MODES = {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"}
# Metadata keys left out of PNG files: they differ run to run (JSON summaries and results keep them).
PNG_OMITTED = ("timings",)

# ---------------------------------------------------------------- checks


def checked_image(image, field: str, max_pixels: int = MAX_PIXELS, min_side: int = 1) -> Image.Image:
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


def decode_image(data: bytes, field: str) -> Image.Image:
    """Decodes uploaded bytes after checking their size, the format and the header's width × height.

    Raises ``RequestError(field, ...)`` for anything too big, not an image, or corrupt.
    """
    if not isinstance(data, (bytes, bytearray)) or not data:
        raise RequestError(field, "is empty; upload a PNG, JPEG or WebP image")
    if len(data) > MAX_UPLOAD_BYTES:
        raise RequestError(field, f"at most {MAX_UPLOAD_BYTES} bytes; got {len(data)}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))  # reads the header only
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise RequestError(field, f"at most {MAX_PIXELS} pixels; the image header declares far more") from None
    except ValueError as e:
        if "Too Large" in str(e) or "too large" in str(e):  # PIL's cap on zTXt/iTXt/iCCP chunks
            raise RequestError(field, "its metadata (a text or ICC profile chunk) is too large; save the image again without metadata") from None
        raise RequestError(field, "is not an image (expected PNG, JPEG or WebP)") from None
    except (UnidentifiedImageError, OSError, SyntaxError):
        raise RequestError(field, "is not an image (expected PNG, JPEG or WebP)") from None
    if img.format not in ALLOWED_FORMATS:
        raise RequestError(field, f"format {img.format} is not accepted; use PNG, JPEG or WebP")
    w, h = img.size
    if w * h > MAX_PIXELS or max(w, h) > MAX_UPLOAD_SIDE:
        raise RequestError(field, f"at most {MAX_PIXELS} pixels and {MAX_UPLOAD_SIDE} per side; got {w}x{h}")
    if w < 1 or h < 1:
        raise RequestError(field, f"has no pixels ({w}x{h})")
    try:
        img.load()
    except Exception:
        raise RequestError(field, "is corrupt or truncated; could not decode it") from None
    if img.mode not in ("RGB", "RGBA"):
        img = img.convert("RGBA" if ("A" in img.getbands() or "transparency" in img.info) else "RGB")
    return img


# ---------------------------------------------------------------- out


def to_pil(x: Tensor) -> list[Image.Image]:
    """(B,3,H,W) in [-1,1] -> PIL images."""
    a = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(np.ascontiguousarray(im)) for im in a]


def parameters_text(meta: dict) -> str:
    """A1111-style ``parameters`` text."""
    lines = [meta.get("prompt", "")]
    if meta.get("negative_prompt"):
        lines.append(f"Negative prompt: {meta['negative_prompt']}")
    lines.append(
        f"Steps: {meta.get('steps')}, Sampler: {meta.get('sampler')}, CFG scale: {meta.get('guidance')}, Seed: {meta.get('seed')}, "
        f"Size: {meta.get('size')}, Model: {meta.get('model')}, Encoders: {meta.get('encoders')}, SR steps: {meta.get('sr_steps')}"
    )
    return "\n".join(lines)


def png_info(meta: dict) -> PngInfo:
    """The text chunks of a generated PNG: ``parameters`` and the ``ediff`` JSON (``PNG_OMITTED`` left out)."""
    info = PngInfo()
    info.add_text("parameters", parameters_text(meta))
    info.add_text("ediff", json.dumps({k: v for k, v in meta.items() if k not in PNG_OMITTED}, default=str))
    return info


def save_png(image: Image.Image, path: str | Path, meta: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, pnginfo=png_info(meta))
    return path


def encode_png(img: Image.Image, pnginfo: PngInfo | None = None) -> bytes:
    """PNG bytes, with the metadata chunks in ``pnginfo`` when given."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", pnginfo=pnginfo)
    return buf.getvalue()
