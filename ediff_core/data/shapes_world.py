"""Shapes World: seeded scenes, rendering, splits and a torch Dataset.

The binding spec is docs/SHAPES_WORLD.md (kept in /work/shared). Everything here is a pure
function of an integer seed: the same seed gives the same scene, image and captions everywhere.
Coordinates are fractions of the canvas width W, with y pointing down (0 = top).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from .captions import captions, cell_of

# ---- spec constants ----------------------------------------------------------------------------
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "heart", "diamond")
SIZES: dict[str, float] = {"small": 0.08, "large": 0.15}  # half-extent r, fraction of W
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 38, 38),
    "orange": (240, 135, 20),
    "yellow": (240, 205, 20),
    "green": (40, 155, 60),
    "cyan": (20, 180, 200),
    "blue": (35, 85, 215),
    "purple": (135, 55, 185),
    "pink": (235, 105, 175),
}
STYLES: tuple[str, ...] = ("plain", "paper", "striped", "dotted", "night", "comic")
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "plain": (236, 236, 236),
    "paper": (238, 228, 200),
    "striped": (232, 232, 232),
    "dotted": (245, 240, 235),
    "night": (18, 22, 45),
    "comic": (250, 245, 225),
}
STRIPE_COLOR = (205, 212, 222)
DOT_COLOR = (210, 205, 200)
HALFTONE_COLOR = (225, 215, 190)
SHADOW_COLOR = (60, 60, 60)
STAR_DOT_COLOR = (255, 255, 255)
HELD_OUT: frozenset[tuple[str, str]] = frozenset(
    {("purple", "heart"), ("cyan", "triangle"), ("yellow", "square"), ("green", "star")}
)
MARGIN = 0.03  # box to canvas edge
GAP = 0.03  # between boxes of different objects
SHADOW_OFFSET = 0.03  # comic drop shadow, down-right
STRIPE_PERIOD = 0.125  # measured across the stripes
PAPER_GRAIN_SIGMA = 6.0  # per pixel, as measured in the final 64-px image
_GRAIN_GAIN = 1.28  # Lanczos 256 -> 64 shrinks the grain's σ by this factor
NIGHT_STARS = 40
STAR_INNER = 0.45  # inner / outer radius of the 5-point star
# Our own choice (not in the spec): centres keep this distance from the 3x3 grid lines, so an
# object's cell survives downsampling and detection without ambiguity.
CELL_MARGIN = 0.02
RENDER_SIZE = 256  # drawing resolution
IMAGE_SIZE = 64  # final resolution; the base model uses 32 (Lanczos from 64)

SPLITS: dict[str, range] = {
    "train": range(0, 10**9),
    "validation": range(10**9, 10**9 + 10**6),
    "test": range(2 * 10**9, 2 * 10**9 + 10**6),
}


# ---- scene graph -------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShapeObject:
    """One object: centre (cx, cy) in fractions of W, half-extent given by `size`."""

    shape: str
    color: str
    size: str
    cx: float
    cy: float

    @property
    def r(self) -> float:
        return SIZES[self.size]

    @property
    def box(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) in fractions of W."""
        return (self.cx - self.r, self.cy - self.r, self.cx + self.r, self.cy + self.r)

    @property
    def cell(self) -> str:
        return cell_of(self.cx, self.cy)


@dataclass(frozen=True)
class Scene:
    style: str
    objects: tuple[ShapeObject, ...]
    seed: int  # drives placement, paper grain, night stars and caption phrasing


def split_seed(split: str, index: int) -> int:
    """The seed of example `index` of `split`."""
    if split not in SPLITS:
        raise ValueError(f"unknown split '{split}'; choose from {list(SPLITS)}")
    seeds = SPLITS[split]
    if not 0 <= index < len(seeds):
        raise ValueError(f"index {index} is outside the {len(seeds)} seeds of split '{split}'")
    return seeds[index]


def split_of(seed: int) -> str:
    for name, seeds in SPLITS.items():
        if seed in seeds:
            return name
    raise ValueError(f"seed {seed} is in no split; use split_seed(split, index)")


# ---- sampling ----------------------------------------------------------------------------------
def _near_grid_line(v: float) -> bool:
    return abs(v - 1 / 3) < CELL_MARGIN or abs(v - 2 / 3) < CELL_MARGIN


def _gap_ok(a: tuple[float, float, float], b: tuple[float, float, float]) -> bool:
    """Axis-aligned boxes (cx, cy, r) keep at least GAP between them."""
    reach = a[2] + b[2] + GAP - 1e-9
    return abs(a[0] - b[0]) >= reach or abs(a[1] - b[1]) >= reach


def _place(rng: random.Random, radii: Sequence[float]) -> list[tuple[float, float]]:
    """Rejection-sample centres honouring MARGIN, GAP and CELL_MARGIN; larger objects first."""
    order = sorted(range(len(radii)), key=lambda i: -radii[i])
    for _ in range(200):
        placed: dict[int, tuple[float, float, float]] = {}
        for i in order:
            r = radii[i]
            lo, hi = MARGIN + r, 1 - MARGIN - r
            for _ in range(60):
                cx, cy = rng.uniform(lo, hi), rng.uniform(lo, hi)
                if _near_grid_line(cx) or _near_grid_line(cy):
                    continue
                if all(_gap_ok((cx, cy, r), other) for other in placed.values()):
                    placed[i] = (cx, cy, r)
                    break
            else:
                break
        else:
            return [(placed[i][0], placed[i][1]) for i in range(len(radii))]
    raise RuntimeError(f"could not place objects of radii {list(radii)}")


def sample_scene(
    seed: int,
    split: str | None = None,
    n_objects: int | None = None,
    max_objects: int = 4,
    include: tuple[str, str] | None = None,
) -> Scene:
    """Sample the scene of `seed` (see SPLITS; use split_seed(split, i) to get one).

    split: optional check that `seed` lies in that split's range (None: inferred).
    n_objects: fixed object count; None draws 1..max_objects uniformly.
    include: a (color, shape) pair the scene must contain, e.g. a held-out pair for evaluation
        (test split only for held-out pairs).
    Training and validation scenes never contain a HELD_OUT pair; test scenes may.
    """
    actual = split_of(seed)
    if split is not None and split != actual:
        raise ValueError(f"seed {seed} belongs to '{actual}', not '{split}'; use split_seed('{split}', i)")
    if include is not None and (include[0] not in COLORS or include[1] not in SHAPES):
        raise ValueError(f"include must be a (color, shape) pair from COLORS and SHAPES, got {include}")
    if include is not None and include in HELD_OUT and actual != "test":
        raise ValueError(f"held-out pair {include} may only be sampled from the test split")
    rng = random.Random(seed)
    style = rng.choice(STYLES)
    n = n_objects if n_objects is not None else rng.randint(1, max_objects)
    if not 1 <= n <= 4:
        raise ValueError(f"n_objects must be in 1..4, got {n}")
    color_names = list(COLORS)
    attrs: list[tuple[str, str, str]] = []
    for i in range(n):
        if i == 0 and include is not None:
            color, shape = include
        else:
            while True:
                color, shape = rng.choice(color_names), rng.choice(SHAPES)
                if actual == "test" or (color, shape) not in HELD_OUT:
                    break
        attrs.append((color, shape, rng.choice(("small", "large"))))
    rng.shuffle(attrs)
    centres = _place(rng, [SIZES[s] for _, _, s in attrs])
    objects = tuple(ShapeObject(sh, c, s, cx, cy) for (c, sh, s), (cx, cy) in zip(attrs, centres))
    return Scene(style, objects, seed)


def make_scene(objects: Sequence[tuple[str, str, str, float, float]], style: str = "plain", seed: int = 0) -> Scene:
    """Build a scene by hand from (shape, color, size, cx, cy) tuples (checks names, not layout)."""
    if style not in STYLES:
        raise ValueError(f"unknown style '{style}'; choose from {STYLES}")
    built = []
    for shape, color, size, cx, cy in objects:
        if shape not in SHAPES or color not in COLORS or size not in SIZES:
            raise ValueError(f"unknown object ({shape}, {color}, {size}); see SHAPES, COLORS, SIZES")
        built.append(ShapeObject(shape, color, size, float(cx), float(cy)))
    return Scene(style, tuple(built), seed)


# ---- geometry shared with the detector ---------------------------------------------------------
@lru_cache(maxsize=None)
def unit_polygon(shape: str) -> np.ndarray:
    """Outline of `shape` in units of r around its box centre, (K, 2) as (x, y), y down.

    Every shape is centred in its box and touches at least two opposite box sides.
    """
    if shape == "circle":
        t = np.linspace(0, 2 * math.pi, 64, endpoint=False)
        return np.stack([np.cos(t), np.sin(t)], 1)
    if shape == "square":
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float)
    if shape == "diamond":
        return np.array([[0, -1], [1, 0], [0, 1], [-1, 0]], float)
    if shape == "triangle":  # apex up
        return np.array([[0, -1], [1, 1], [-1, 1]], float)
    if shape == "star":  # 5 points, apex up, shifted so its box is centred
        k = np.arange(10)
        rad = np.where(k % 2 == 0, 1.0, STAR_INNER)
        ang = -math.pi / 2 + k * math.pi / 5
        pts = np.stack([rad * np.cos(ang), rad * np.sin(ang)], 1)
        pts[:, 1] -= (pts[:, 1].max() + pts[:, 1].min()) / 2
        return pts
    if shape == "heart":
        t = np.linspace(0, 2 * math.pi, 72, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        y -= (y.max() + y.min()) / 2
        return np.stack([x, y], 1) / 16.0
    raise ValueError(f"unknown shape '{shape}'; choose from {SHAPES}")


# ---- rendering ---------------------------------------------------------------------------------
def _pixel_centres(n: int) -> tuple[np.ndarray, np.ndarray]:
    c = np.arange(n, dtype=np.float64) + 0.5
    return np.meshgrid(c, c)  # xs, ys


def _fill(shape: tuple[int, int], color: tuple[int, int, int]) -> np.ndarray:
    return np.broadcast_to(np.array(color, np.uint8), (*shape, 3)).copy()


def _dot_grid(spacing: float, radius: float) -> np.ndarray:
    """Mask of a staggered dot grid at RENDER_SIZE; spacing and radius in fractions of W."""
    s, rad = spacing * RENDER_SIZE, radius * RENDER_SIZE
    xs, ys = _pixel_centres(RENDER_SIZE)
    row = np.floor(ys / s)
    shift = (row % 2) * s / 2  # stagger odd rows by half a period
    dx = (xs + shift) % s - s / 2
    dy = ys % s - s / 2
    return (dx**2 + dy**2) <= rad**2


@lru_cache(maxsize=None)
def _static_background(style: str) -> np.ndarray:
    """(256, 256, 3) uint8 background of `style` without its per-seed parts; cached, read-only."""
    n = RENDER_SIZE
    img = _fill((n, n), BACKGROUNDS[style])
    if style == "striped":
        xs, ys = _pixel_centres(n)
        period = STRIPE_PERIOD * n
        img[((xs + ys) / math.sqrt(2)) % period < period / 2] = STRIPE_COLOR
    elif style == "dotted":
        img[_dot_grid(0.125, 0.022)] = DOT_COLOR
    elif style == "comic":
        img[_dot_grid(0.0625, 0.012)] = HALFTONE_COLOR
    img.setflags(write=False)
    return img


def _background(style: str, seed: int) -> np.ndarray:
    img = _static_background(style)
    if style == "paper":  # grain: one N(0, σ) value per pixel of the 64-px image, monochrome
        grain = np.random.default_rng(seed).normal(0.0, PAPER_GRAIN_SIGMA * _GRAIN_GAIN, (IMAGE_SIZE, IMAGE_SIZE))
        grain = np.kron(grain, np.ones((RENDER_SIZE // IMAGE_SIZE,) * 2))[..., None]
        return np.clip(img + grain, 0, 255).round().astype(np.uint8)
    return img.copy()


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill: tuple[int, int, int] | int) -> None:
    """Draw at RENDER_SIZE; arguments in fractions of W. PIL puts pixel centres at integers."""
    n = RENDER_SIZE
    if shape == "circle":
        draw.ellipse([(cx - r) * n, (cy - r) * n, (cx + r) * n - 1, (cy + r) * n - 1], fill=fill)
        return
    pts = unit_polygon(shape) * (r * n) + np.array([cx * n, cy * n]) - 0.5
    draw.polygon([tuple(p) for p in pts.tolist()], fill=fill)


def render_canvas(scene: Scene) -> Image.Image:
    """The full-resolution (RENDER_SIZE) drawing of `scene`."""
    img = Image.fromarray(_background(scene.style, scene.seed))
    draw = ImageDraw.Draw(img)
    if scene.style == "night":
        rng = np.random.default_rng(scene.seed)
        for x, y, rad in zip(*rng.uniform(0, 1, (2, NIGHT_STARS)), rng.uniform(1.2, 2.4, NIGHT_STARS)):
            px, py = x * RENDER_SIZE, y * RENDER_SIZE
            draw.ellipse([px - rad, py - rad, px + rad, py + rad], fill=STAR_DOT_COLOR)
    if scene.style == "comic":  # all shadows first, so no shadow covers an object
        for o in scene.objects:
            _draw_shape(draw, o.shape, o.cx + SHADOW_OFFSET, o.cy + SHADOW_OFFSET, o.r, SHADOW_COLOR)
    for o in scene.objects:
        _draw_shape(draw, o.shape, o.cx, o.cy, o.r, COLORS[o.color])
    return img


def object_masks(scene: Scene, size: int = IMAGE_SIZE) -> np.ndarray:
    """(n_objects, size, size) float32: the fraction of each pixel each object covers, drawn as
    ``render_canvas`` draws it (comic shadows are not the object) and box-filtered down from 256."""
    masks = []
    for o in scene.objects:
        canvas = Image.new("L", (RENDER_SIZE, RENDER_SIZE), 0)
        _draw_shape(ImageDraw.Draw(canvas), o.shape, o.cx, o.cy, o.r, 255)
        masks.append(np.asarray(canvas.resize((size, size), Image.BOX), np.float32) / 255)
    return np.stack(masks) if masks else np.zeros((0, size, size), np.float32)


def render(scene: Scene, size: int = IMAGE_SIZE) -> Image.Image:
    """Render at 256 and Lanczos down to 64; sizes below 64 go through 64 (as the cascade does)."""
    img = render_canvas(scene)
    if size == RENDER_SIZE:
        return img
    if size >= IMAGE_SIZE:
        return img.resize((size, size), Image.LANCZOS)
    return img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.LANCZOS).resize((size, size), Image.LANCZOS)


def render_batch(seeds: Sequence[int], size: int = IMAGE_SIZE, **sample_kw) -> np.ndarray:
    """Images of the scenes of `seeds`, (N, size, size, 3) uint8."""
    return np.stack([np.asarray(render(sample_scene(s, **sample_kw), size)) for s in seeds])


# ---- torch dataset -----------------------------------------------------------------------------
class ShapesWorldDataset(torch.utils.data.Dataset):
    """Example i is the scene of split_seed(split, seed_offset + i).

    Items: {"image": (3, size, size) float in [-1, 1], "captions": {"short", "medium", "long"},
    "scene": Scene, "seed": int}. Batch them with `collate`.
    """

    def __init__(self, split: str = "train", size: int = IMAGE_SIZE, length: int = 100_000,
                 seed_offset: int = 0, max_objects: int = 4) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split '{split}'; choose from {list(SPLITS)}")
        if seed_offset + length > len(SPLITS[split]):
            raise ValueError(f"seed_offset + length exceeds the {len(SPLITS[split])} seeds of '{split}'")
        self.split, self.size, self.length = split, size, length
        self.seed_offset, self.max_objects = seed_offset, max_objects

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(index)
        seed = split_seed(self.split, self.seed_offset + index)
        scene = sample_scene(seed, max_objects=self.max_objects)
        pixels = torch.from_numpy(np.asarray(render(scene, self.size)).copy())
        image = pixels.permute(2, 0, 1).float() / 127.5 - 1.0  # (3, H, W)
        return {"image": image, "captions": captions(scene), "scene": scene, "seed": seed}


def collate(batch: list[dict]) -> dict:
    """Stack images; captions become {"short": [...], ...}; scenes stay a list."""
    return {
        "image": torch.stack([b["image"] for b in batch]),
        "captions": {k: [b["captions"][k] for b in batch] for k in batch[0]["captions"]},
        "scene": [b["scene"] for b in batch],
        "seed": torch.tensor([b["seed"] for b in batch]),
    }
