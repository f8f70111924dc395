"""From prompts and reference images to a ``Cond`` batch (eDiff-I §4.2: three frozen embeddings)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .conditioning import Cond
from .encoders.base import ImageEncoder, TextEncoder


@dataclass
class EncoderSet:
    """The three frozen encoders eDiff-I conditions on."""

    t5: TextEncoder
    clip_text: TextEncoder
    clip_image: ImageEncoder

    @property
    def dims(self) -> dict[str, int]:
        """Widths the U-Nets' projections are built for."""
        return {
            "clip_dim": self.clip_text.dim,
            "clip_pooled_dim": self.clip_text.pooled_dim,
            "t5_dim": self.t5.dim,
            "image_dim": self.clip_image.dim,
        }

    @torch.no_grad()
    def encode(self, prompts: list[str], images: Tensor | None = None, device: torch.device | str = "cpu") -> Cond:
        """Encodes a batch. ``images``: (B,3,H,W) in [0,1] whose CLIP embedding conditions, or None.

        Without images the image embedding is zero and its ``keep`` flag False.
        """
        t5 = self.t5.encode(prompts)
        clip = self.clip_text.encode(prompts)
        B = len(prompts)
        keep = torch.ones(B, 3, dtype=torch.bool)
        if images is None:
            image_embed = torch.zeros(B, self.clip_image.dim)
            keep[:, 2] = False
        else:
            if images.shape[0] != B:
                raise ValueError(f"got {images.shape[0]} reference images for {B} prompts")
            image_embed = self.clip_image.encode_image(images).float()
        cond = Cond(
            clip_tokens=clip.tokens.float(),
            clip_mask=clip.mask.bool(),
            clip_pooled=clip.pooled.float(),
            t5_tokens=t5.tokens.float(),
            t5_mask=t5.mask.bool(),
            image_embed=image_embed,
            keep=keep,
        )
        return cond.to(device)


def load_encoder_set(t5_path: str, clip_path: str, device: torch.device | str = "cpu") -> EncoderSet:
    """Loads T5 and CLIP (text + image towers) from folders or Hub ids."""
    from .encoders.loading import load_clip, load_text_encoder

    t5 = load_text_encoder("t5", t5_path, device)
    clip = load_clip(clip_path, device)
    return EncoderSet(t5=t5, clip_text=clip.text, clip_image=clip.image)
