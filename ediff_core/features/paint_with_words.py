"""Paint-with-words (eDiff-I §4.3, Figs. 6 and 17): training-free placement of phrases by sketch.

The user paints a region per phrase of the prompt. Each region becomes a mask; ``token_maps``
writes it into the columns of that phrase's tokens, in both the CLIP and the T5 parts of the
key sequence ``[null | CLIP 77 | T5 L | image]``. Every cross-attention layer then computes

    softmax((QKᵀ + w·A) / √d_k) · V,   w = w′ · log(1 + σ) · max(QKᵀ)

with A the masks bilinearly downsampled to the layer's resolution (§4.3). ``w′`` is the request's
``pww_weight``; it is zero in classifier-free guidance's unconditional branch, so only the
conditional branch is steered.

This module is that chain only: sketch -> masks (``PaintSpec.masks``) -> token maps over the key
sequence (``token_maps``) -> the bias w·A (``PaintBias``). The processor that adds the bias inside
cross-attention is ``attention.EDiffAttnProcessor``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from ..core.attention import layer_hw
from ..core.conditioning import Cond, key_layout
from ..core.feature import Feature
from ..core.guidance import GuidedCond
from ..core.images import checked_image
from ..core.request import GenerationRequest, RequestError
from ..data.shapes_world import COLORS

if TYPE_CHECKING:
    from ..pipeline import EDiffPipeline

WORK_SIDE = 1024  # sketches are labelled at most this large (nearest-neighbour: no colour blending)
COLOR_TOLERANCE = 80.0  # RGB distance within which a brush pixel snaps to a mapped colour
ALPHA_MIN = 8  # alpha below this counts as transparent (not painted)
MAX_STRENGTH = 10.0
# Bounds on the work one request can ask for before it is admitted: masks are one (H, W) plane
# per phrase, so the phrase count and the sketch's size bound the rasterising.
MAX_PHRASES = 16
MAX_PHRASE_CHARS = 200
PALETTE: dict[str, tuple[int, int, int]] = dict(COLORS)  # the 8 Shapes World colours (SHAPES_WORLD.md)
_HEX = re.compile(r"^#?([0-9a-fA-F]{6})$")


def hex_colour(rgb: tuple[int, int, int]) -> str:
    return "#%02x%02x%02x" % tuple(rgb)


def split_phrases(phrases) -> tuple[dict[str, str], dict[str, float]]:
    """``parse_phrases``, refused when it maps nothing, split into colour -> words and
    words -> strength (from 'words@0.5')."""
    parsed = parse_phrases(phrases)
    if not parsed:
        raise RequestError("phrases", "map at least one colour of the sketch to a phrase of the prompt ('#RRGGBB=words')")
    words: dict[str, str] = {}
    strengths: dict[str, float] = {}
    for colour, phrase in parsed.items():
        if "@" not in phrase:
            words[colour] = phrase
            continue
        text, _, value = phrase.rpartition("@")
        try:
            strengths[text.strip()] = float(value)
        except ValueError:
            raise RequestError("phrases", f"'{phrase}': the strength after '@' must be a number; got {value!r}") from None
        words[colour] = text.strip()
    return words, strengths


def parse_colour(text, field: str = "phrases") -> str:
    """'#RRGGBB', 'RRGGBB', 'rgb(r, g, b)', a Shapes World colour name or an (r, g, b) tuple -> '#rrggbb'."""
    if isinstance(text, (tuple, list)) and len(text) == 3 and all(isinstance(c, int) and 0 <= c <= 255 for c in text):
        return hex_colour(text)
    t = str(text).strip().lower()
    if t in PALETTE:
        return hex_colour(PALETTE[t])
    m = _HEX.match(t)
    if m:
        return "#" + m.group(1)
    m = re.match(r"^rgba?\(\s*([\d.]+)\s*,\s*([\d.]+)\s*,\s*([\d.]+)", t)
    if m:
        rgb = tuple(int(round(float(x))) for x in m.groups())
        if all(0 <= c <= 255 for c in rgb):
            return hex_colour(rgb)
        raise RequestError(field, f"colour {text!r}: each of r, g, b must be from 0 to 255")
    raise RequestError(field, f"colour {text!r} is not of the form #RRGGBB (e.g. #ff0000), rgb(r, g, b) or one of {', '.join(PALETTE)}")


def parse_phrases(value, field: str = "phrases") -> dict[str, str]:
    """The one colour -> phrase parser (CLI, UI and API): a dict, a list of ``"#RRGGBB=words"``,
    or that as JSON or lines text; a phrase may end in ``@strength``. Returns {'#rrggbb': 'words[@s]'}."""
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
    elif isinstance(value, (list, tuple)):
        items = []
        for entry in value:
            if not isinstance(entry, str) or "=" not in entry:
                raise RequestError(field, f"{entry!r} is not of the form '#RRGGBB=words of the prompt'")
            items.append(tuple(entry.split("=", 1)))
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
        c = parse_colour(colour, field)
        if c in out:
            raise RequestError(field, f"colour {c} is given twice ('{out[c]}' and '{phrase}')")
        out[c] = phrase
    return out


def _rgb(colour: str) -> tuple[int, int, int]:
    return tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))


@dataclass
class PhraseMasks:
    """Masks of a sketch at one resolution, one per colour entry, in the order of ``PaintSpec.phrases``."""

    masks: Tensor  # (P, H, W) float in [0, 1]: painted coverage (alpha-weighted)
    colours: list[str]
    phrases: list[str]
    warnings: list[str]


@dataclass
class PaintSpec:
    """A colour sketch and which phrase of the prompt each colour paints.

    Args:
        sketch: the drawing (RGB, or RGBA whose transparent pixels are unpainted); at most 4096² pixels.
        phrases: colour ('#rrggbb') -> phrase of the prompt. Two colours may paint one phrase.
        strengths: phrase -> multiplier of its mask (default 1; 0 disables it), on top of ``pww_weight``.
        tolerance: RGB distance within which an anti-aliased pixel snaps to its nearest mapped colour;
            pixels further from every mapped colour (white paper, pencil lines) are unpainted.
    """

    sketch: Image.Image
    phrases: dict[str, str]
    strengths: dict[str, float] = field(default_factory=dict)
    tolerance: float = COLOR_TOLERANCE

    def __post_init__(self) -> None:
        self.sketch = checked_image(self.sketch, "sketch")
        if not isinstance(self.phrases, dict) or not self.phrases:
            raise RequestError("phrases", "paint-with-words needs at least one '#RRGGBB=words of the prompt' entry")
        mapped: dict[str, str] = {}
        for colour, phrase in self.phrases.items():
            c = parse_colour(colour)
            if not isinstance(phrase, str) or not phrase.strip():
                raise RequestError("phrases", f"colour {c} maps to an empty phrase")
            if c in mapped:
                raise RequestError("phrases", f"colour {c} is given twice ('{mapped[c]}' and '{phrase}')")
            mapped[c] = phrase.strip()
        self.phrases = mapped
        for phrase, s in self.strengths.items():
            if phrase not in mapped.values():
                raise RequestError("phrases", f"a strength is given for '{phrase}', which no colour paints")
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not (0.0 <= s <= MAX_STRENGTH):
                raise RequestError("phrases", f"the strength of '{phrase}' must be a number from 0 to {MAX_STRENGTH}; got {s!r}")
        if not (isinstance(self.tolerance, (int, float)) and 0 < self.tolerance <= 442):
            raise RequestError("sketch", f"tolerance must be in (0, 442]; got {self.tolerance!r}")

    # ---- constructors -------------------------------------------------------------------------
    @classmethod
    def from_mapping(cls, sketch, phrases) -> "PaintSpec":
        """The one constructor of CLI, UI and API: the sketch and what ``parse_phrases`` reads
        ({'#RRGGBB': 'words[@strength]'}, ['#RRGGBB=words', ...] or that as text)."""
        return cls(sketch, *split_phrases(phrases))

    @classmethod
    def from_layers(cls, background, layers: list, phrases) -> "PaintSpec":
        """From gr.ImageEditor's parts: the layers (RGBA strokes) composited over the background.

        The background may be None (a transparent canvas) or an uploaded sketch; its unmapped
        colours (e.g. white paper) are ignored like any other.
        """
        parts = [checked_image(p, "sketch").convert("RGBA") for p in [background, *(layers or [])] if p is not None]
        if not parts:
            raise RequestError("sketch", "the sketch is empty: no background and no layers")
        canvas = parts[0] if background is not None else Image.new("RGBA", parts[0].size, (0, 0, 0, 0))
        for layer in parts[1:] if background is not None else parts:
            if layer.size != canvas.size:
                layer = layer.resize(canvas.size, Image.NEAREST)
            canvas = Image.alpha_composite(canvas, layer)
        return cls.from_mapping(canvas, phrases)

    @classmethod
    def from_editor(cls, value: dict, phrases) -> "PaintSpec":
        """From gr.ImageEditor's value ``{"background", "layers", "composite"}``."""
        if not isinstance(value, dict):
            raise RequestError("sketch", f"expected the image editor's dict (background, layers, composite); got {type(value).__name__}")
        if value.get("layers") or value.get("background") is not None:
            return cls.from_layers(value.get("background"), value.get("layers") or [], phrases)
        return cls.from_mapping(value.get("composite"), phrases)

    # ---- description and masks ----------------------------------------------------------------
    def strength(self, phrase: str) -> float:
        return float(self.strengths.get(phrase, 1.0))

    def describe(self) -> dict:
        """JSON-able summary for metadata: phrases with colours and strengths, sketch size."""
        return {
            "phrases": [{"colour": c, "phrase": p, "strength": self.strength(p)} for c, p in self.phrases.items()],
            "sketch_size": [self.sketch.width, self.sketch.height],
            "tolerance": self.tolerance,
        }

    def masks(self, height: int, width: int) -> PhraseMasks:
        """Per-colour masks at (height, width): brush pixels snap to the nearest mapped colour."""
        img = self.sketch
        if max(img.size) > WORK_SIDE:
            k = WORK_SIDE / max(img.size)
            img = img.resize((max(1, round(img.width * k)), max(1, round(img.height * k))), Image.NEAREST)
        rgba = np.asarray(img.convert("RGBA"))  # (h, w, 4) uint8
        alpha = rgba[..., 3]
        opaque = alpha >= ALPHA_MIN
        if not opaque.any():
            raise RequestError("sketch", "the sketch is empty: every pixel is transparent; paint a region for each phrase")
        colours = list(self.phrases)
        palette = np.array([_rgb(c) for c in colours], np.int32)  # (P, 3)
        rgb = rgba[..., :3].astype(np.int32)
        d2 = np.stack([((rgb - c) ** 2).sum(-1) for c in palette], -1)  # (h, w, P) squared RGB distances
        nearest = d2.argmin(-1)
        painted = opaque & (d2.min(-1) <= self.tolerance**2)
        if not painted.any():
            raise RequestError(
                "sketch",
                f"no pixel of the sketch is within {self.tolerance:g} of a mapped colour ({', '.join(colours)}); "
                f"its colours are {', '.join(_top_colours(rgb[opaque]))}. Paint with exactly the colours of the phrases",
            )
        weight = alpha.astype(np.float32) / 255.0
        full = np.stack([np.where(painted & (nearest == k), weight, 0.0) for k in range(len(colours))]).astype(np.float32)
        warnings = [
            f"colour {c} ('{self.phrases[c]}') does not appear in the sketch; that phrase is not painted"
            for c, m in zip(colours, full) if not m.any()
        ]
        h, w = full.shape[1:]
        if abs(w / h - width / height) > 0.05 * width / height:
            warnings.append(f"the sketch is {self.sketch.width}x{self.sketch.height} but the image is {width}x{height}; the sketch is stretched to fit")
        down = h >= height and w >= width  # area = exact painted coverage per pixel; bilinear to upsample
        masks = F.interpolate(torch.from_numpy(full)[None], size=(height, width), mode="area" if down else "bilinear", align_corners=None if down else False)[0]
        return PhraseMasks(masks.clamp(0, 1), colours, [self.phrases[c] for c in colours], warnings)


def _top_colours(pixels: np.ndarray, k: int = 4) -> list[str]:
    """The k most frequent colours of (N, 3) pixels as '#rrggbb'."""
    packed = (pixels[:, 0] << 16) | (pixels[:, 1] << 8) | pixels[:, 2]
    values, counts = np.unique(packed, return_counts=True)
    return ["#%06x" % int(v) for v in values[np.argsort(-counts)[:k]]]


# ---- phrases -> key-sequence columns -----------------------------------------------------------
def phrase_positions(pipe: "EDiffPipeline", prompt: str, phrase: str) -> tuple[list[int], list[int]]:
    """Positions of ``phrase``'s tokens in the CLIP (77) and T5 (L) sequences of ``prompt``.

    A phrase found by only one tokenizer (the other truncated the prompt) keeps that one;
    absent from both is a ``RequestError('phrase', "phrase 'x' is not in the prompt 'y'")``.
    """
    found, errors = [], []
    for enc in (pipe.encoders.clip_text, pipe.encoders.t5):
        try:
            found.append(enc.phrase_token_positions(prompt, phrase))
        except ValueError as e:
            found.append([])
            errors.append(str(e))
    if not any(found):
        raise RequestError("phrases", errors[0])
    return found[0], found[1]


def token_maps(pipe: "EDiffPipeline", req: "GenerationRequest", cond: Cond, notes: dict | None = None) -> Cond:
    """``cond`` with ``token_maps`` (B, S, H, W) over the key sequence and ``pww_weight`` = w′ (B,).

    Column j of A (§4.3) is the mask of the phrase containing key token j, times its strength, in
    both the CLIP and the T5 parts; warnings (unused colours, stretched sketch) go to ``notes``.
    """
    spec = req.paint
    if not isinstance(spec, PaintSpec):
        raise RequestError("paint", f"must be a PaintSpec (a sketch and a colour -> phrase map); got {type(spec).__name__}")
    res = pipe.base.resolution
    pm = spec.masks(res, res)
    layout = key_layout(cond.t5_tokens.shape[1], cond.clip_tokens.shape[1])
    B = cond.batch_size
    maps = torch.zeros(B, layout["image"].stop, res, res, device=cond.device)
    for mask, phrase in zip(pm.masks, pm.phrases):
        clip_pos, t5_pos = phrase_positions(pipe, req.prompt, phrase)
        cols = [layout["clip"].start + p for p in clip_pos] + [layout["t5"].start + p for p in t5_pos]
        value = (mask * spec.strength(phrase)).to(cond.device)
        maps[:, cols] = torch.maximum(maps[:, cols], value)  # phrases sharing a token: the larger mask
    if notes is not None and pm.warnings:
        notes.setdefault("paint_warnings", []).extend(pm.warnings)
    return replace(cond, token_maps=maps, pww_weight=torch.full((B,), float(req.pww_weight), device=cond.device))


class Paint(Feature):
    """The painted phrases' token maps on the prompt's conditioning (not the switched prompt's); the
    super-resolution stages condition on the text alone (the bias acts at the base stage)."""

    @classmethod
    def for_request(cls, pipe: "EDiffPipeline", req: GenerationRequest) -> Optional["Paint"]:
        return cls() if req.paint is not None else None

    def condition(self, pipe: "EDiffPipeline", req: GenerationRequest, field: str, cond: Cond, notes: dict) -> Cond:
        return token_maps(pipe, req, cond, notes) if field == "prompt" else cond

    def for_sr(self, req: GenerationRequest, gc: GuidedCond, prompts: dict[str, GuidedCond]) -> GuidedCond:
        return GuidedCond(replace(gc.cond, token_maps=None, pww_weight=None), gc.uncond, gc.scale)


# ---- the bias -----------------------------------------------------------------------------------
class PaintBias:
    """The paint-with-words bias w·A (§4.3), an ``attention.AttentionBias``.

    Args:
        weighting: 'max' is the paper's w = w′·log(1+σ)·max(QKᵀ) (the magnitude of the max, so the
            bias always pulls towards the phrase); 'std' uses std(QKᵀ), the community port's option.
    """

    def __init__(self, weighting: str = "max"):
        if weighting not in ("max", "std"):
            raise ValueError(f"weighting must be 'max' or 'std'; got {weighting!r}")
        self.weighting = weighting

    def __call__(self, scores: Tensor, attention_mask: Tensor | None, cond: Cond, sigma: Tensor | None, n_tokens: int) -> Tensor:
        """w·A/√d_k (§4.3) in the units of ``scores`` = QKᵀ/√d_k: (B, 1, N, S)."""
        if sigma is None:
            raise ValueError("paint-with-words needs σ; run the network through EDiffUNet, which passes it")
        maps = cond.token_maps.to(scores.device, torch.float32)  # (B, S, H, W)
        h, w = layer_hw(n_tokens, maps.shape[-2], maps.shape[-1])
        A = F.interpolate(maps, size=(h, w), mode="bilinear", antialias=True, align_corners=False)  # bilinear downsampling
        A = A.flatten(2).transpose(1, 2)  # (B, N, S)
        valid = torch.ones_like(scores, dtype=torch.bool) if attention_mask is None else (attention_mask > -1).expand_as(scores)
        flat, ok = scores.flatten(1), valid.flatten(1)
        if self.weighting == "max":
            stat = flat.masked_fill(~ok, -math.inf).amax(1).abs()
        else:
            n = ok.sum(1)
            mean = flat.where(ok, 0.0).sum(1) / n
            stat = (((flat - mean[:, None]) ** 2).where(ok, 0.0).sum(1) / (n - 1).clamp(min=1)).sqrt()
        wt = cond.pww_weight.to(scores.device, torch.float32) * torch.log1p(sigma.to(scores.device, torch.float32)) * stat  # (B,)
        return (wt[:, None, None] * A)[:, None]
