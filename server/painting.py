"""Paint-with-words inputs for the server and the UI: the palette, colour → phrase maps, checks.

The spec itself is ``ediff_core.paint_with_words.PaintSpec``; this module turns what a client
sends (a sketch and ``{"#RRGGBB": "phrase"}`` or ``["#RRGGBB=phrase"]``) into one, and refuses
with a clear ``RequestError`` a map that names no colour of the sketch or a phrase that is not in
the prompt, before any work is queued.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
from PIL import Image

from ediff_core.request import RequestError

# The 8 Shapes World colours (shared/SHAPES_WORLD.md), the brushes of the paint tab.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (215, 38, 38),
    "orange": (240, 135, 20),
    "yellow": (240, 205, 20),
    "green": (40, 155, 60),
    "cyan": (20, 180, 200),
    "blue": (35, 85, 215),
    "purple": (135, 55, 185),
    "pink": (235, 105, 175),
}
MATCH_DISTANCE = 40.0  # RGB distance within which a sketch pixel counts as a mapped colour
MIN_PIXELS = 4  # a mapped colour must cover at least this many sketch pixels
_HEX = re.compile(r"^#?([0-9a-fA-F]{6})$")


def hex_colour(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def parse_colour(text: str, field: str = "phrases") -> tuple[int, int, int]:
    """``#RRGGBB``, ``RRGGBB``, ``rgb(r, g, b)`` or a palette name to an RGB triple."""
    t = str(text).strip().lower()
    if t in PALETTE:
        return PALETTE[t]
    m = _HEX.match(t)
    if m:
        v = m.group(1)
        return int(v[0:2], 16), int(v[2:4], 16), int(v[4:6], 16)
    m = re.match(r"^rgba?\(\s*([\d.]+)\s*,\s*([\d.]+)\s*,\s*([\d.]+)", t)
    if m:
        return tuple(int(round(float(x))) for x in m.groups())  # type: ignore[return-value]
    raise RequestError(field, f"colour {text!r} is not #RRGGBB, rgb(r, g, b) or one of {', '.join(PALETTE)}")


def parse_phrases(value: Any, field: str = "phrases") -> dict[str, str]:
    """A colour → phrase map from a dict, a list of ``"#RRGGBB=words"`` or JSON/lines text."""
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return {}
        if text.startswith(("{", "[")):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as e:
                raise RequestError(field, f"is not valid JSON: {e}") from None
        else:
            value = [line for line in re.split(r"[\n;]+", text) if line.strip()]
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, list):
        items = []
        for entry in value:
            if not isinstance(entry, str) or "=" not in entry:
                raise RequestError(field, f"entry {entry!r} must look like '#RRGGBB=words of the prompt'")
            c, p = entry.split("=", 1)
            items.append((c, p))
    else:
        raise RequestError(field, 'must be {"#RRGGBB": "phrase"} or ["#RRGGBB=phrase", ...]')
    out: dict[str, str] = {}
    for colour, phrase in items:
        if not isinstance(phrase, str):
            raise RequestError(field, f"phrase for {colour} must be text")
        phrase = phrase.strip()
        if phrase:
            out[hex_colour(parse_colour(colour, field))] = phrase
    return out


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def check_phrase_in_prompt(phrase: str, prompt: str, field: str = "phrases") -> None:
    """Case- and punctuation-insensitive: the phrase's words must appear in order in the prompt."""
    p, w = _words(phrase), _words(prompt)
    if not p or not any(w[i : i + len(p)] == p for i in range(len(w) - len(p) + 1)):
        raise RequestError(field, f"phrase {phrase!r} is not in the prompt {prompt!r}")


def colour_coverage(sketch: Image.Image, colours: list[str]) -> dict[str, int]:
    """How many sketch pixels lie within ``MATCH_DISTANCE`` of each colour (opaque pixels only)."""
    rgba = np.asarray(sketch.convert("RGBA"), dtype=np.float32)
    rgb, alpha = rgba[..., :3], rgba[..., 3]
    out = {}
    for c in colours:
        d = np.linalg.norm(rgb - np.array(parse_colour(c), dtype=np.float32), axis=-1)
        out[c] = int(((d <= MATCH_DISTANCE) & (alpha > 127)).sum())
    return out


def check_paint_inputs(sketch: Image.Image, phrases: dict[str, str], prompt: str) -> None:
    """Refuses an empty map, a phrase not in the prompt, or a map naming no colour of the sketch."""
    if not phrases:
        raise RequestError("phrases", "map at least one colour of the sketch to a phrase of the prompt")
    for phrase in phrases.values():
        check_phrase_in_prompt(phrase, prompt)
    cover = colour_coverage(sketch, list(phrases))
    if not any(n >= MIN_PIXELS for n in cover.values()):
        raise RequestError("sketch", f"none of the mapped colours ({', '.join(phrases)}) appears in the sketch; paint with those colours or map the ones you used")


def paint_spec(sketch: Image.Image, phrases: dict[str, str], prompt: str) -> Any:
    """A ``PaintSpec`` from a sketch and a colour → phrase map, after the checks above."""
    check_paint_inputs(sketch, phrases, prompt)
    from ediff_core.paint_with_words import PaintSpec

    try:
        return PaintSpec.from_cli(sketch, [f"{c}={p}" for c, p in phrases.items()])
    except RequestError:
        raise
    except ValueError as e:
        raise RequestError("phrases", str(e)) from None


def flatten_layers(background: Image.Image | None, layers: list[Image.Image], size: tuple[int, int] | None = None) -> Image.Image:
    """The editor's layers composited over white (what was painted, without the background)."""
    if size is None:
        ref = background if background is not None else (layers[0] if layers else None)
        size = ref.size if ref is not None else (256, 256)
    canvas = Image.new("RGBA", size, (255, 255, 255, 255))
    for layer in layers:
        if layer is not None:
            canvas.alpha_composite(layer.convert("RGBA").resize(size))
    return canvas.convert("RGB")
