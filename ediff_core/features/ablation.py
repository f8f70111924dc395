"""Encoder ablation (eDiff-I §5.2, Figs. 8 and 18): the same request and seed with T5 and CLIP
text together, T5 alone and CLIP alone.

The paper finds CLIP-only right on objects and global look but weak at composition, counting and
text; T5-only better at composition but worse at rendering objects; both best. Dropping an
encoder at inference is exactly training-time dropout (App. A), so no retraining is involved.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from PIL import Image, ImageDraw, ImageFont

if TYPE_CHECKING:
    from ..pipeline import GenerationResult

MODE_LABELS = {"both": "T5 + CLIP", "t5": "T5 only", "clip": "CLIP only"}


def grid(images: Sequence[Image.Image], labels: Sequence[str], tile: int = 192, label_height: int = 22) -> Image.Image:
    """Images side by side, each scaled to ``tile`` pixels (nearest) under its label."""
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if not images:
        raise ValueError("grid needs at least one image")
    out = Image.new("RGB", (tile * len(images), tile + label_height), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default()
    for k, (img, label) in enumerate(zip(images, labels)):
        scale = tile / max(img.size)
        im = img.convert("RGB").resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.NEAREST)
        out.paste(im, (k * tile + (tile - im.width) // 2, label_height + (tile - im.height) // 2))
        left, _, right, _ = draw.textbbox((0, 0), label, font=font)
        draw.text((k * tile + max(2, (tile - (right - left)) // 2), 4), label, fill=(0, 0, 0), font=font)
    return out


def ablation_grid(results: dict[str, "GenerationResult"], index: int = 0) -> Image.Image:
    """The grid of ``compare_encoders``' output, labelled 'T5 + CLIP', 'T5 only', 'CLIP only'."""
    return grid([r.images[index] for r in results.values()], [MODE_LABELS.get(m, m) for m in results])
