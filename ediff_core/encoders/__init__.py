"""Text and image encoders (eDiff-I §4.2): T5 and CLIP, the real models and the ediff-mini ones.

Import what you need; nothing is loaded at import time::

    from ediff_core.encoders import load_text_encoder, load_clip
    t5 = load_text_encoder("t5", "checkpoints/ediff-mini/t5", "cpu")
    clip = load_clip("checkpoints/ediff-mini/clip", "cpu")   # .text and .image
"""

from ediff_core.encoders.base import ImageEncoder, TextEmbedding, TextEncoder
from ediff_core.encoders.loading import load_clip, load_text_encoder

__all__ = [
    "ImageEncoder",
    "TextEmbedding",
    "TextEncoder",
    "load_clip",
    "load_text_encoder",
]
