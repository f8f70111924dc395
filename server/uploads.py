"""Untrusted images in: base64 bodies and files Gradio stored, bounded before anything is decoded.

Every upload (base64 in the REST API, a file the Gradio server saved for a UI or API client)
ends in ``ediff_core.core.images.decode_image``: the byte size is checked first, then ``Image.open``
reads only the header, and the format and the width × height are checked before ``.load()``
decodes the pixels. Nothing here takes a path from a client: Gradio hands us paths of files it stored.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
from pathlib import Path

from PIL import Image

from ediff_core.core.images import MAX_UPLOAD_BYTES, decode_image
from ediff_core.core.request import RequestError


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
