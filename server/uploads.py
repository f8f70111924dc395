"""Untrusted images in: byte and pixel limits checked before anything is decoded.

Every upload (base64 in the REST API, a file the Gradio server saved for a UI or API client)
goes through ``decode_image``: the byte size is checked first, then ``Image.open`` reads only
the header, and the format and the width × height are checked before ``.load()`` decodes the
pixels. Nothing here takes a path from a client: Gradio hands us paths of files it stored.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import stat
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from ediff_core.request import RequestError

MAX_UPLOAD_BYTES = 8 * 1024 * 1024  # an encoded image, before decoding
MAX_UPLOAD_PIXELS = 4096 * 4096  # width × height, read from the header before decoding
MAX_UPLOAD_SIDE = 8192
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP")  # as the docs say; GIF and BMP are refused by name


def decode_image(data: bytes, field: str) -> Image.Image:
    """Decodes an uploaded image after checking bytes, format and header size.

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
        raise RequestError(field, f"at most {MAX_UPLOAD_PIXELS} pixels; the image header declares far more") from None
    except ValueError as e:
        if "Too Large" in str(e) or "too large" in str(e):  # PIL's cap on zTXt/iTXt/iCCP chunks
            raise RequestError(field, "its metadata (a text or ICC profile chunk) is too large; save the image again without metadata") from None
        raise RequestError(field, "is not an image (expected PNG, JPEG or WebP)") from None
    except (UnidentifiedImageError, OSError, SyntaxError):
        raise RequestError(field, "is not an image (expected PNG, JPEG or WebP)") from None
    if img.format not in ALLOWED_FORMATS:
        raise RequestError(field, f"format {img.format} is not accepted; use PNG, JPEG or WebP")
    w, h = img.size
    if w * h > MAX_UPLOAD_PIXELS or max(w, h) > MAX_UPLOAD_SIDE:
        raise RequestError(field, f"at most {MAX_UPLOAD_PIXELS} pixels and {MAX_UPLOAD_SIDE} per side; got {w}x{h}")
    if w < 1 or h < 1:
        raise RequestError(field, f"has no pixels ({w}x{h})")
    try:
        img.load()
    except Exception:
        raise RequestError(field, "is corrupt or truncated; could not decode it") from None
    if img.mode not in ("RGB", "RGBA"):
        img = img.convert("RGBA" if ("A" in img.getbands() or "transparency" in img.info) else "RGB")
    return img


def check_base64_size(text: str, field: str) -> str:
    """The base64 part of ``text`` (a ``data:`` URL prefix dropped), refused when too long to be
    an accepted image; costs nothing, so the server checks it before admitting the request."""
    if not isinstance(text, str) or not text:
        raise RequestError(field, "must be a base64-encoded image")
    if text.startswith("data:"):
        text = text.split(",", 1)[-1]
    if len(text) > (MAX_UPLOAD_BYTES * 4) // 3 + 8:
        raise RequestError(field, f"at most {MAX_UPLOAD_BYTES} bytes once decoded; got about {len(text) * 3 // 4}")
    return text


def decode_base64_image(text: str, field: str) -> Image.Image:
    """A base64 string (optionally a ``data:image/...;base64,`` URL) to an image, limits first."""
    text = check_base64_size(text, field)
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(field, "is not valid base64") from None
    return decode_image(data, field)


def read_uploaded_file(path: str | Path | None, field: str) -> Image.Image:
    """An image from a file the Gradio server stored for an upload.

    Gradio has already refused paths outside this instance's upload folder (``app.py``); inside
    it, only a regular file is read (no FIFO, device or link, which a client could not upload but
    a local user could plant), opened without blocking and read to at most the byte limit + 1.
    Every refusal has the same text, so it never says what is at the path.
    """
    if path is None or path == "":
        raise RequestError(field, "is required; upload an image")
    refused = RequestError(field, "must be a file uploaded to this server with the request; upload the image")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        raise refused from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise refused
        data = f.read(MAX_UPLOAD_BYTES + 1)
    if len(data) > MAX_UPLOAD_BYTES:
        raise RequestError(field, f"at most {MAX_UPLOAD_BYTES} bytes; got more")
    return decode_image(data, field)


def encode_png(img: Image.Image, pnginfo=None) -> bytes:
    """PNG bytes, with the metadata chunks in ``pnginfo`` when given."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", pnginfo=pnginfo)
    return buf.getvalue()
