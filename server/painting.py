"""Paint-with-words inputs for the server and the UI: the palette, colour → phrase maps, checks.

The spec itself is ``ediff_core.paint_with_words.PaintSpec``; this module turns what a client
sends (a sketch and ``{"#RRGGBB": "phrase"}`` or ``["#RRGGBB=phrase"]``, a phrase optionally
ending in ``@strength``) into one, and refuses with a ``RequestError`` naming the API's fields
(``sketch``, ``phrases``) a map that names no colour of the sketch, before any work is queued.
"""

from __future__ import annotations

import json
import re
from typing import Any

from PIL import Image

from ediff_core.data.shapes_world import COLORS
from ediff_core.request import RequestError

# The 8 Shapes World colours (shared/SHAPES_WORLD.md), the brushes of the paint tab.
PALETTE: dict[str, tuple[int, int, int]] = dict(COLORS)
_HEX = re.compile(r"^#?([0-9a-fA-F]{6})$")

# Bounds on the work one request can ask for before it is admitted (issue #24.2): masks are one
# (H, W) plane per phrase, so the phrase count and the sketch's size bound the rasterising.
MAX_PHRASES = 16
MAX_PHRASE_CHARS = 200
MAX_PHRASE_TOKENS = 32
SKETCH_SIDE = 512  # sketches are downscaled (nearest: colours stay exact) to this before masks


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
        rgb = tuple(int(round(float(x))) for x in m.groups())
        if all(0 <= c <= 255 for c in rgb):
            return rgb  # type: ignore[return-value]
        raise RequestError(field, f"colour {text!r}: each of r, g, b must be from 0 to 255")
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
    if len(items) > MAX_PHRASES:
        raise RequestError(field, f"at most {MAX_PHRASES} colours; got {len(items)}")
    out: dict[str, str] = {}
    for colour, phrase in items:
        if not isinstance(phrase, str):
            raise RequestError(field, f"phrase for {colour} must be text")
        phrase = phrase.strip()
        if len(phrase) > MAX_PHRASE_CHARS:
            raise RequestError(field, f"a phrase has at most {MAX_PHRASE_CHARS} characters; the one for {colour} has {len(phrase)}")
        if phrase:
            out[hex_colour(parse_colour(colour, field))] = phrase
    return out


def checked_phrases(phrases: dict[str, str], field: str = "phrases") -> dict[str, str]:
    """The caps of ``parse_phrases`` on an already parsed map; returns colour -> phrase without ``@strength``."""
    if not phrases:
        raise RequestError(field, "map at least one colour of the sketch to a phrase of the prompt")
    if len(phrases) > MAX_PHRASES:
        raise RequestError(field, f"at most {MAX_PHRASES} colours; got {len(phrases)}")
    out = {}
    for colour, phrase in phrases.items():
        if not isinstance(phrase, str) or len(phrase) > MAX_PHRASE_CHARS:
            raise RequestError(field, f"the phrase for {colour} must be text of at most {MAX_PHRASE_CHARS} characters")
        out[colour] = phrase.rpartition("@")[0].strip() if "@" in phrase else phrase.strip()
    return out


def check_phrase_tokens(phrase: str, positions: tuple[list[int], list[int]], field: str = "phrases") -> None:
    """Refuses a phrase that covers more than ``MAX_PHRASE_TOKENS`` tokens of either encoder."""
    n = max(len(p) for p in positions)
    if n > MAX_PHRASE_TOKENS:
        raise RequestError(field, f"a phrase covers at most {MAX_PHRASE_TOKENS} tokens; '{phrase[:40]}' covers {n}")


def downscaled(sketch: Image.Image, side: int = SKETCH_SIDE) -> Image.Image:
    """The sketch at most ``side`` pixels on its long side (nearest neighbour keeps brush colours)."""
    if max(sketch.size) <= side:
        return sketch
    k = side / max(sketch.size)
    return sketch.resize((max(1, round(sketch.width * k)), max(1, round(sketch.height * k))), Image.NEAREST)


def _renamed(e: RequestError) -> RequestError:
    """The library's CLI field names (``phrase``, ``paint``) as the API's (``phrases``, ``sketch``)."""
    field = {"phrase": "phrases", "paint": "sketch"}.get(e.field, e.field)
    message = str(e).removeprefix(f"{e.field}: ").replace("--phrase", "a phrase").replace("--paint", "the sketch")
    return RequestError(field, message)


def paint_spec(sketch: Image.Image, phrases: dict[str, str]) -> Any:
    """A ``PaintSpec`` from a sketch and ``{"#rrggbb": "phrase[@strength]"}``.

    The sketch is downscaled to ``SKETCH_SIDE`` first; an empty map, too many phrases and a sketch
    in which no mapped colour appears are refused (the masks are computed once, small, to check).
    The server runs this in the request's slot (``Model.paint_prepare``).
    """
    from ediff_core.paint_with_words import PaintSpec

    checked_phrases(phrases)
    try:
        spec = PaintSpec.from_cli(downscaled(sketch), [f"{c}={p}" for c, p in phrases.items()])
        spec.masks(64, 64)
    except RequestError as e:
        raise _renamed(e) from None
    return spec


def phrase_checked(fn, *args: Any) -> Any:
    """Calls ``fn(*args)`` with the library's paint errors renamed to the API's fields."""
    try:
        return fn(*args)
    except RequestError as e:
        raise _renamed(e) from None
