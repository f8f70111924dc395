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


def _renamed(e: RequestError) -> RequestError:
    """The library's CLI field names (``phrase``, ``paint``) as the API's (``phrases``, ``sketch``)."""
    field = {"phrase": "phrases", "paint": "sketch"}.get(e.field, e.field)
    message = str(e).removeprefix(f"{e.field}: ").replace("--phrase", "a phrase").replace("--paint", "the sketch")
    return RequestError(field, message)


def paint_spec(sketch: Image.Image, phrases: dict[str, str]) -> Any:
    """A ``PaintSpec`` from a sketch and ``{"#rrggbb": "phrase[@strength]"}``.

    Refuses at once an empty map and a sketch in which no mapped colour appears (the masks are
    computed once, small, to check), so such a request never takes a slot in the queue.
    """
    from ediff_core.paint_with_words import PaintSpec

    if not phrases:
        raise RequestError("phrases", "map at least one colour of the sketch to a phrase of the prompt")
    try:
        spec = PaintSpec.from_cli(sketch, [f"{c}={p}" for c, p in phrases.items()])
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
