"""Measurements of the user controls on Shapes World: paint-with-words placement (§4.3) and
CLIP-image style transfer (§5.3).

- ``paint_placement_rate``: random layouts of 2–3 objects with distinct colours; the sketch paints
  each object's region in its own Shapes World colour. An image counts when every phrase's object
  (found by colour with ``detect_objects``) has its centre inside its painted region. Run with
  ``with_pww=False`` for the chance level of the same prompts.
- ``style_rate``: the reference is a Shapes World render in the style; the prompt does not name a
  style. The output's background style is classified from colour statistics of its non-object
  pixels against the six styles' backdrop colours (SHAPES_WORLD.md).
"""

from __future__ import annotations

import random
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from ediff_core.data.shapes_world import (
    BACKGROUNDS, COLORS, DOT_COLOR, HALFTONE_COLOR, HELD_OUT, SHADOW_COLOR, STAR_DOT_COLOR, STRIPE_COLOR, STYLES,
    ShapeObject, make_scene, render, sample_scene, split_seed,
)
from ediff_core.tools.eval.alignment import COLOR_DISTANCE, detect_objects
from ediff_core.core.request import GenerationRequest
from ediff_core.tools.eval.suite import ControlRate

if TYPE_CHECKING:
    from ediff_core.pipeline import EDiffPipeline

PAINT_TARGET = 0.85  # #26: every object of the layout in its region, share of layouts
STYLE_TARGETS = {"night": 0.8, "comic": 0.8}  # #26: style transfer at strength 1
SKETCH_SIZE = 256
REGION_SCALE = 1.5  # painted region: the object's box grown by this factor around its centre
# Every colour a background of each style is drawn with (SHAPES_WORLD.md, "Styles").
STYLE_COLOURS: dict[str, tuple[tuple[int, int, int], ...]] = {
    "plain": (BACKGROUNDS["plain"],),
    "paper": (BACKGROUNDS["paper"],),
    "striped": (BACKGROUNDS["striped"], STRIPE_COLOR),
    "dotted": (BACKGROUNDS["dotted"], DOT_COLOR),
    "night": (BACKGROUNDS["night"], STAR_DOT_COLOR),
    "comic": (BACKGROUNDS["comic"], HALFTONE_COLOR, SHADOW_COLOR),
}
_BACKDROP = np.array([c for cs in STYLE_COLOURS.values() for c in cs], np.float64)  # (11, 3)
_PALETTE = np.array(list(COLORS.values()), np.float64)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _prompt(objects: list[ShapeObject]) -> str:
    items = [f"{_article(o.color)} {o.color} {o.shape}" for o in objects]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _objects(rng: random.Random, k: int) -> list[ShapeObject]:
    """k objects with a valid Shapes World layout and distinct colours (no held-out pairs)."""
    scene = sample_scene(split_seed("validation", rng.randrange(10**6)), n_objects=k)
    colours = rng.sample(list(COLORS), len(COLORS))
    out = []
    for o in scene.objects:
        c = next(c for c in colours if (c, o.shape) not in HELD_OUT and c not in {p.color for p in out})
        out.append(ShapeObject(o.shape, c, o.size, o.cx, o.cy))
    return out


def _region(o: ShapeObject, scale: float = REGION_SCALE) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) in fractions of W: the box grown by ``scale``, clipped to the canvas."""
    r = o.r * scale
    return max(0.0, o.cx - r), max(0.0, o.cy - r), min(1.0, o.cx + r), min(1.0, o.cy + r)


def placement_layout(seed: int) -> tuple[str, list[ShapeObject], Image.Image, dict[str, str]]:
    """A random 2–3 object layout: prompt, objects, the colour sketch and its colour -> phrase map."""
    rng = random.Random(f"paint:{seed}")
    objects = _objects(rng, rng.choice((2, 3)))
    sketch = Image.new("RGB", (SKETCH_SIZE, SKETCH_SIZE), (255, 255, 255))
    draw = ImageDraw.Draw(sketch)
    phrases = {}
    for o in objects:
        x0, y0, x1, y1 = (v * SKETCH_SIZE for v in _region(o))
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=COLORS[o.color])
        phrases["#%02x%02x%02x" % COLORS[o.color]] = f"{o.color} {o.shape}"
    return _prompt(objects), objects, sketch, phrases


def paint_placement_rate(pipe: "EDiffPipeline", n: int, seed: int, with_pww: bool, pww_weight: float = 1.0, out: Path | None = None, **request: object) -> ControlRate:
    """Share of ``n`` random layouts whose every object lands (centre) inside its painted region.

    ``request`` holds further ``GenerationRequest`` fields (steps, guidance, ...). With ``out``, each
    image is saved as ``{pww|plain}_III_{ok|no}.png`` and, by the painted run, each layout's sketch as ``sketch_III.png``.
    """
    from ediff_core.features.paint_with_words import PaintSpec

    hits, details = 0, []
    for i in range(n):
        prompt, objects, sketch, phrases = placement_layout(seed + i)
        paint = PaintSpec(sketch, phrases) if with_pww else None
        result = pipe(GenerationRequest(prompt, seed=seed + i, paint=paint, pww_weight=pww_weight, **request))
        found = detect_objects(result.images[0])
        placed = []
        for o in objects:
            x0, y0, x1, y1 = _region(o)
            placed.append(any(d.color == o.color and x0 <= d.cx <= x1 and y0 <= d.cy <= y1 for d in found))
        hits += all(placed)
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            if with_pww:  # the layout is the same for both runs; its sketch is written once
                sketch.save(out / f"sketch_{i:03d}.png")
            result.images[0].save(out / f"{'pww' if with_pww else 'plain'}_{i:03d}_{'ok' if all(placed) else 'no'}.png")
        details.append({"prompt": prompt, "seed": seed + i, "placed": placed, "detections": [(d.color, d.shape, round(d.cx, 3), round(d.cy, 3)) for d in found]})
    return ControlRate(hits / max(n, 1), hits, n, details)


# ---- style classification -------------------------------------------------------------------
def _background_feature(image: Image.Image) -> np.ndarray | None:
    """Fractions of non-object pixels nearest to each backdrop colour (11,), None if too few."""
    rgb = np.asarray(image.convert("RGB"), np.float64)
    near_object = np.linalg.norm(rgb[:, :, None] - _PALETTE, axis=-1).min(-1) <= COLOR_DISTANCE
    background = ~ndimage.binary_dilation(near_object, structure=np.ones((3, 3), bool))
    px = rgb[background]
    if len(px) < 0.05 * background.size:
        return None
    nearest = np.linalg.norm(px[:, None] - _BACKDROP, axis=-1).argmin(-1)
    return np.bincount(nearest, minlength=len(_BACKDROP)) / len(px)


@lru_cache(maxsize=8)
def _prototypes(size: int, per_style: int = 4) -> dict[str, np.ndarray]:
    """Mean background feature of ``per_style`` validation renders of each style at ``size``."""
    out = {}
    for style in STYLES:
        feats = []
        for k in range(per_style):
            s = sample_scene(split_seed("validation", 500_000 + k))
            scene = make_scene([(o.shape, o.color, o.size, o.cx, o.cy) for o in s.objects], style=style, seed=s.seed)
            feats.append(_background_feature(render(scene, size)))
        out[style] = np.mean([f for f in feats if f is not None], axis=0)
    return out


def classify_style(image: Image.Image) -> str | None:
    """The Shapes World style whose background statistics are nearest (L1); None if no background."""
    feat = _background_feature(image)
    if feat is None:
        return None
    protos = _prototypes(image.width)
    return min(protos, key=lambda s: float(np.abs(protos[s] - feat).sum()))


def style_rate(pipe: "EDiffPipeline", style: str, n: int, seed: int, strength: float = 1.0, **request: object) -> ControlRate:
    """Share of ``n`` outputs whose background is classified as ``style``, the reference's style.

    Each trial conditions a style-free prompt on a Shapes World render in ``style`` (§5.3).
    """
    if style not in STYLES:
        raise ValueError(f"unknown style '{style}'; choose from {', '.join(STYLES)}")
    hits, details = 0, []
    for i in range(n):
        rng = random.Random(f"style:{seed + i}")
        ref = sample_scene(split_seed("validation", rng.randrange(10**6)))
        reference = render(make_scene([(o.shape, o.color, o.size, o.cx, o.cy) for o in ref.objects], style=style, seed=ref.seed))
        prompt = _prompt(_objects(rng, rng.choice((1, 2))))
        result = pipe(GenerationRequest(prompt, seed=seed + i, style_image=reference, style_strength=strength, **request))
        got = classify_style(result.images[0])
        hits += got == style
        details.append({"prompt": prompt, "seed": seed + i, "style": style, "classified": got})
    return ControlRate(hits / max(n, 1), hits, n, details)
