"""Captions of three lengths generated from a Shapes World scene graph, plus the grid and relation
vocabulary they use (shared with ediff_core.tools.eval.alignment, which parses them back).

short  (≤ 12 words): counts, colours, shapes            "a red circle and two blue stars"
medium            : + the 3×3 cell of each object      "a red circle at the top left and ..."
long   (25–60 words): style, sizes, cells, relations    "It is drawn on old paper. There is ..."
The style is named in about a third of short and medium captions and in every long one.

``grounded_captions`` gives the same captions with, per object group, the character spans of the
words that name it (colour, shape and size words; "two blue stars" names both stars), for the
token-grounding loss (ediff_core.tools.grounding).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, Sequence

if TYPE_CHECKING:
    from .shapes_world import Scene, ShapeObject

CELL_NAMES: tuple[str, ...] = (
    "top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right",
)
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
RELATION_MIN = 0.15  # spec: centres more than 0.15 W apart along the dominant axis
# Our choice: long captions only state relations that hold with this much slack (fractions of W),
# so that they survive rendering and detection error; the check itself uses the exact rule.
RELATION_MARGIN = 0.03
SHORT_MAX_WORDS = 12
LONG_WORDS = (25, 60)
STYLE_PROBABILITY = 1 / 3

NUMBER_WORDS = ("zero", "one", "two", "three", "four")
SIZE_WORDS = {"small": ("small", "tiny", "little"), "large": ("large", "big")}
STYLE_PHRASES = {
    "plain": ("on a plain background", "on a plain grey background", "on a blank background"),
    "paper": ("on old paper", "on paper", "on a sheet of old paper"),
    "striped": ("on a striped background", "on diagonal stripes", "on a striped wall"),
    "dotted": ("on a dotted background", "on polka dots", "on a dotted pattern"),
    "night": ("at night", "in the night sky", "under a dark night sky"),
    "comic": ("in comic style", "in a comic book style", "as a comic drawing"),
}
STYLE_SENTENCES = {
    "plain": ("The background is plain light grey.", "It is drawn on a plain grey background."),
    "paper": ("It is drawn on old paper with a grainy texture.", "The picture is printed on old yellowed paper."),
    "striped": ("The background has diagonal grey stripes.", "It is set on a striped background with diagonal lines."),
    "dotted": ("The background is a dotted pattern of soft grey dots.", "It is drawn on a dotted background."),
    "night": ("The scene is set at night under a dark sky with tiny white specks.", "It is night, and the dark sky is sprinkled with small white dots."),
    "comic": ("It is drawn in comic style with halftone dots and dark drop shadows.", "The picture is in comic book style, and each object casts a dark shadow."),
}
CELL_PHRASES = {
    "top left": ("at the top left", "in the top left corner", "in the upper left"),
    "top": ("at the top", "near the top"),
    "top right": ("at the top right", "in the top right corner", "in the upper right"),
    "left": ("on the left", "at the left"),
    "center": ("in the center", "in the middle", "at the center"),
    "right": ("on the right", "at the right"),
    "bottom left": ("at the bottom left", "in the bottom left corner", "in the lower left"),
    "bottom": ("at the bottom", "near the bottom"),
    "bottom right": ("at the bottom right", "in the bottom right corner", "in the lower right"),
}
RELATION_PHRASES = {
    "left of": ("is left of", "is to the left of"),
    "right of": ("is right of", "is to the right of"),
    "above": ("is above",),
    "below": ("is below", "is beneath"),
}
PREFIXES = ("", "", "a picture of ", "an image of ", "a drawing of ")
COUNT_SENTENCES = ("There are {n} objects in total.", "The picture holds {n} objects.")
SINGLE_SENTENCES = ("It is the only object in the picture.", "There is nothing else in the picture.")
FILLERS = (
    "The objects do not overlap.",
    "Everything is drawn with clean flat colours.",
    "The composition is simple and clear.",
    "Nothing else can be seen.",
    "The edges are crisp and smooth.",
)


@dataclass(frozen=True)
class WordSpan:
    """Characters [start, end) of one word of a caption naming the objects ``objects`` (indices
    into ``Scene.objects``): a colour, shape or size word."""

    objects: tuple[int, ...]
    start: int
    end: int


@dataclass(frozen=True)
class GroundedCaption:
    text: str
    spans: tuple[WordSpan, ...]

    def groups(self) -> dict[tuple[int, ...], list[tuple[int, int]]]:
        """Each named object group -> the character spans of its words, in caption order."""
        out: dict[tuple[int, ...], list[tuple[int, int]]] = {}
        for s in self.spans:
            out.setdefault(s.objects, []).append((s.start, s.end))
        return out


# Generators mark each object word as \x01<indices>\x02<word>\x03; ``_untag`` strips the marks
# and records the spans. Marks hold no whitespace, so word counts (and every random draw) are unchanged.
_TAGGED = re.compile("\x01([0-9,]+)\x02([^\x03]*)\x03")


def _tag(word: str, objects: Sequence[int]) -> str:
    return f"\x01{','.join(map(str, objects))}\x02{word}\x03"


def _untag(tagged: str) -> GroundedCaption:
    parts, spans, pos, n = [], [], 0, 0
    for m in _TAGGED.finditer(tagged):
        parts.append(tagged[pos : m.start()])
        n += m.start() - pos
        word = m.group(2)
        spans.append(WordSpan(tuple(int(i) for i in m.group(1).split(",")), n, n + len(word)))
        parts.append(word)
        n += len(word)
        pos = m.end()
    parts.append(tagged[pos:])
    return GroundedCaption("".join(parts), tuple(spans))


class HasCentre(Protocol):
    cx: float
    cy: float


def cell_of(cx: float, cy: float) -> str:
    """Name of the 3×3 grid cell holding the point (cx, cy), fractions of W, y down."""
    col, row = min(int(cx * 3), 2), min(int(cy * 3), 2)
    return CELL_NAMES[max(row, 0) * 3 + max(col, 0)]


def relation(a: HasCentre, b: HasCentre, margin: float = 0.0) -> str | None:
    """How A relates to B: 'left of', 'right of', 'above', 'below' or None (spec rule).

    A is left of B when A's centre is more than 0.15 W left of B's and the horizontal gap is at
    least the vertical one; likewise the others. `margin` demands that much extra slack.
    """
    dx, dy = b.cx - a.cx, b.cy - a.cy  # > 0: A is left of / above B
    if abs(dx) >= abs(dy) + margin and abs(dx) > RELATION_MIN + margin:
        return "left of" if dx > 0 else "right of"
    if abs(dy) >= abs(dx) + margin and abs(dy) > RELATION_MIN + margin:
        return "above" if dy > 0 else "below"
    return None


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _indices(scene: Scene) -> dict[int, tuple[int, ...]]:
    """id(object) -> (its index in scene.objects,), the tag of its words."""
    return {id(o): (i,) for i, o in enumerate(scene.objects)}


def _join(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _words(text: str) -> int:
    return len(text.split())


def _object_phrase(rng: random.Random, o: ShapeObject, size: bool, cell: bool, shortest: bool = False, tag: tuple[int, ...] = ()) -> str:
    words = [o.color, o.shape]
    if size:
        words.insert(0, SIZE_WORDS[o.size][0] if shortest else rng.choice(SIZE_WORDS[o.size]))
    phrase = _article(words[0]) + " " + " ".join(_tag(w, tag) for w in words)
    if cell:
        options = CELL_PHRASES[o.cell]
        phrase += " " + (min(options, key=_words) if shortest else rng.choice(options))
    return phrase


def _short(scene: Scene, rng: random.Random) -> str:
    index = _indices(scene)
    groups: dict[tuple[str, str], tuple[int, ...]] = {}
    for o in rng.sample(scene.objects, len(scene.objects)):
        groups[(o.color, o.shape)] = groups.get((o.color, o.shape), ()) + index[id(o)]
    items = []
    for (color, shape), tag in groups.items():
        k = len(tag)
        if k > 1:
            items.append(f"{NUMBER_WORDS[k]} {_tag(color, tag)} {_tag(shape + 's', tag)}")
        else:
            items.append(f"{'one' if rng.random() < 0.15 else _article(color)} {_tag(color, tag)} {_tag(shape, tag)}")
    bare = _join([i.split(" ", 1)[1] if i.split(" ", 1)[0] in ("a", "an", "one") else i for i in items])
    full, prefix = _join(items), rng.choice(PREFIXES)
    styled = rng.random() < STYLE_PROBABILITY
    style = " " + rng.choice(STYLE_PHRASES[scene.style])
    tersest = " " + min(STYLE_PHRASES[scene.style], key=_words)
    options = [prefix + full + style, full + style, full + tersest, bare + tersest] if styled else []
    for text in [*options, prefix + full, full, bare]:
        if _words(text) <= SHORT_MAX_WORDS:
            return text
    raise AssertionError("unreachable: four bare objects take at most 9 words")


def _medium(scene: Scene, rng: random.Random) -> str:
    sizes, index = rng.random() < 0.3, _indices(scene)
    items = [_object_phrase(rng, o, sizes, True, tag=index[id(o)]) for o in rng.sample(scene.objects, len(scene.objects))]
    prefix = rng.choice(PREFIXES)
    style = " " + rng.choice(STYLE_PHRASES[scene.style]) if rng.random() < STYLE_PROBABILITY else ""
    return prefix + _join(items) + style


def _reference(o: ShapeObject, tag: tuple[int, ...]) -> str:
    return f"the {_tag(o.color, tag)} {_tag(o.shape, tag)}"


def _long(scene: Scene, rng: random.Random) -> str:
    objs, index = rng.sample(scene.objects, len(scene.objects)), _indices(scene)
    style = rng.choice(STYLE_SENTENCES[scene.style])

    def objects_text(shortest: bool) -> list[str]:
        phrases = [_object_phrase(rng, o, True, True, shortest, index[id(o)]) for o in objs]
        kind = 0 if shortest else rng.randrange(3)
        if kind == 0:
            return [f"It shows {_join(phrases)}."]
        if kind == 1:
            return [f"In the picture we see {_join(phrases)}."]
        return [f"There is {p}." for p in phrases]

    body = objects_text(False)
    if _words(" ".join([style, *body])) > LONG_WORDS[1]:
        body = objects_text(True)
    sentences = [style, *body] if rng.random() < 0.6 else [*body, style]

    def fits(extra: str) -> bool:
        return _words(" ".join([*sentences, extra])) <= LONG_WORDS[1]

    pairs = [(a, b) for a in objs for b in objs if a is not b]
    rng.shuffle(pairs)
    unique = {(o.color, o.shape) for o in objs if sum((p.color, p.shape) == (o.color, o.shape) for p in objs) == 1}
    stated: set[frozenset[int]] = set()
    for a, b in pairs:
        rel = relation(a, b, RELATION_MARGIN)
        key = frozenset((id(a), id(b)))
        if rel is None or key in stated or len(stated) >= 3:
            continue
        if (a.color, a.shape) not in unique or (b.color, b.shape) not in unique:
            continue
        text = f"{_reference(a, index[id(a)])} {rng.choice(RELATION_PHRASES[rel])} {_reference(b, index[id(b)])}."
        text = text[0].upper() + text[1:]
        if fits(text):
            sentences.append(text)
            stated.add(key)
    n = len(objs)
    count = rng.choice(SINGLE_SENTENCES) if n == 1 else rng.choice(COUNT_SENTENCES).format(n=NUMBER_WORDS[n])
    if fits(count):
        sentences.append(count)
    for filler in rng.sample(FILLERS, len(FILLERS)):
        if _words(" ".join(sentences)) >= LONG_WORDS[0]:
            break
        sentences.append(filler)
    return " ".join(sentences)


def grounded_captions(scene: Scene, seed: int | None = None) -> dict[str, GroundedCaption]:
    """``captions`` with the spans of each object group's words."""
    rng = random.Random(f"captions:{scene.seed if seed is None else seed}")
    tagged = {"short": _short(scene, rng), "medium": _medium(scene, rng), "long": _long(scene, rng)}
    return {k: _untag(v) for k, v in tagged.items()}


def captions(scene: Scene, seed: int | None = None) -> dict[str, str]:
    """{"short", "medium", "long"} captions of `scene`; phrasing is drawn from `seed` (default: scene.seed)."""
    return {k: c.text for k, c in grounded_captions(scene, seed).items()}
