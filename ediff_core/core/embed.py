"""From prompts and reference images to a ``Cond`` batch (eDiff-I §4.2: three frozen embeddings)."""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from .conditioning import Cond
from ..encoders.base import ImageEncoder, TextEncoder


@dataclass
class EncoderSet:
    """The three frozen encoders eDiff-I conditions on."""

    t5: TextEncoder
    clip_text: TextEncoder
    clip_image: ImageEncoder
    folders: dict[str, Path] = field(default_factory=dict)  # {"t5", "clip"}: where the weights were read

    def fingerprint(self) -> str:
        """``encoder_fingerprint`` of the folders this set was loaded from."""
        if set(self.folders) != {"t5", "clip"}:
            raise ValueError("this encoder set was not loaded from folders; it has no fingerprint")
        return encoder_fingerprint(self.folders["t5"], self.folders["clip"])

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
    from ..encoders.loading import load_clip, load_text_encoder

    folders = encoder_folders(t5_path, clip_path)
    t5 = load_text_encoder("t5", folders["t5"], device)
    clip = load_clip(folders["clip"], device)
    return EncoderSet(t5=t5, clip_text=clip.text, clip_image=clip.image, folders=folders)


def encoder_folders(t5_path: str, clip_path: str) -> dict[str, Path]:
    """The local folders of a T5 and a CLIP named by folder or Hub id; a failure names ``t5`` or ``clip``."""
    from ..encoders.loading import CLIP_HUB_FILES, T5_HUB_FILES, resolve_folder

    folders = {}
    for name, value, patterns in (("t5", t5_path, T5_HUB_FILES), ("clip", clip_path, CLIP_HUB_FILES)):
        try:
            folders[name] = resolve_folder(value, patterns)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{name}: {e}") from None
    return folders


_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_file_hashes: dict[tuple, str] = {}


def _file_hash(path: Path) -> str:
    """sha256 of a file; a Hub snapshot's symlink into the cache names its blob by that hash already."""
    target = Path(os.path.realpath(path))
    if path.is_symlink() and _SHA256.match(target.name):
        return target.name
    st = target.stat()
    memo = (str(target), st.st_size, st.st_mtime_ns)
    if memo not in _file_hashes:
        h = hashlib.sha256()
        with open(target, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        _file_hashes[memo] = h.hexdigest()
    return _file_hashes[memo]


def encoder_fingerprint(t5_folder: str | Path, clip_folder: str | Path) -> str:
    """A hash of the T5 and CLIP weights, configs and tokenizers (every file of both folders):
    an embedding cache made with other weights has another fingerprint and is refused."""
    h = hashlib.sha256()
    for name, folder in (("t5", Path(t5_folder)), ("clip", Path(clip_folder))):
        files = sorted(p for p in folder.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))
        h.update(json.dumps([name, [(str(p.relative_to(folder)), _file_hash(p)) for p in files]]).encode())
    return h.hexdigest()[:16]
