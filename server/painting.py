"""Paint-with-words requests on the server: the bounds checked before admission, and the spec
built in the request's slot.

Parsing (``parse_phrases``, colours, ``@strength``) and the spec are the library's
(``ediff_core.features.paint_with_words``); its errors already name the API's fields (``sketch``,
``phrases``). This module adds what only a shared server needs (issue #24.2): a token cap per
phrase, and sketches downscaled before their masks are rasterised.
"""

from __future__ import annotations

from PIL import Image

from ediff_core.features.paint_with_words import PaintSpec, split_phrases
from ediff_core.core.request import RequestError

MAX_PHRASE_TOKENS = 32
SKETCH_SIDE = 512  # sketches are downscaled (nearest: colours stay exact) to this before masks


def phrase_words(phrases: dict[str, str] | list[str] | str) -> list[str]:
    """The phrases of a colour map (``parse_phrases``' caps apply), without their ``@strength``."""
    return list(split_phrases(phrases)[0].values())


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


def paint_spec(sketch: Image.Image, phrases: dict[str, str]) -> PaintSpec:
    """``PaintSpec.from_mapping`` on the downscaled sketch; a sketch in which no mapped colour
    appears is refused now (its masks are computed once, small). Runs in the request's slot."""
    spec = PaintSpec.from_mapping(downscaled(sketch), phrases)
    spec.masks(64, 64)
    return spec
