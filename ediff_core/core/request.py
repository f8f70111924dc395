"""What a user can ask for, validated once for the CLI, the server and the UI alike.

``GenerationRequest`` is the one request schema: each field that a front end offers carries a
``FieldSpec`` (type, bounds or choices, help). The CLI flags (``cli``), the REST bodies
(``server/schemas``), the UI's choices (``demo/ui``) and the remote client (``demo/client``) are
all read from ``REQUEST_FIELDS``, so a new field is one line here plus its use in the pipeline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from PIL import Image

from .conditioning import ENCODER_MODES
from .samplers import SAMPLERS

if TYPE_CHECKING:
    from ..features.paint_with_words import PaintSpec

MAX_STEPS = 200
MAX_IMAGES = 8
MAX_PROMPT_CHARS = 2000
MAX_SEED = 2**32 - 1
MAX_GUIDANCE = 50.0


class RequestError(ValueError):
    """Bad input: ``field`` names the parameter, the message says what is allowed."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


def pick_device(name: str) -> str:
    """``auto`` → cuda when torch sees one, else cpu; ``cuda`` without a GPU is an error."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RequestError("device", "cuda was asked for but torch sees no CUDA device; use auto or cpu")
    if name not in ("cpu", "cuda"):
        raise RequestError("device", f"must be one of auto, cpu, cuda; got {name!r}")
    return name


@dataclass(frozen=True)
class FieldSpec:
    """How one scalar request field is typed, bounded and described, for every front end.

    ``api``: a field of every REST body (``/v1/generate`` and the feature routes); the others
    are offered where their feature is (``style_strength`` with a style image, ...)."""

    kind: type  # int, float, str or bool
    help: str = ""
    lo: float | None = None  # numbers: inclusive bounds; str: the minimum length
    hi: float | None = None  # str: the maximum length
    choices: tuple[str, ...] | None = None
    api: bool = True

    def check(self, name: str, v: Any, optional: bool) -> None:
        """Raises ``RequestError`` naming ``name`` when ``v`` is not allowed."""
        if v is None and optional:
            return
        if self.choices is not None:
            if v not in self.choices:
                raise RequestError(name, f"must be one of {', '.join(self.choices)}; got {v!r}")
        elif self.kind is int:
            _int(v, name, int(self.lo), int(self.hi))
        elif self.kind is float:
            _float(v, name, self.lo, self.hi)
        elif self.kind is bool:
            if not isinstance(v, bool):
                raise RequestError(name, f"must be true or false; got {v!r}")
        elif self.kind is str:
            if self.lo and (not isinstance(v, str) or not v.strip()):
                raise RequestError(name, "must be a non-empty string")
            if not isinstance(v, str):
                raise RequestError(name, "must be a string")
            if self.hi is not None and len(v) > self.hi:
                raise RequestError(name, f"at most {int(self.hi)} characters; got {len(v)}")


def _spec(default: Any, kind: type, help: str = "", **kw: Any) -> Any:
    return field(default=default, metadata={"spec": FieldSpec(kind, help, **kw)})


@dataclass
class GenerationRequest:
    """One text-to-image request through the cascade. ``None`` means the model's default."""

    prompt: str = field(metadata={"spec": FieldSpec(str, "what to draw", lo=1, hi=MAX_PROMPT_CHARS)})
    negative_prompt: str = _spec("", str, "used in CFG's negative branch instead of the all-dropped conditioning", hi=MAX_PROMPT_CHARS)
    seed: int = _spec(0, int, "image k uses seed + k", lo=0, hi=MAX_SEED)
    steps: int | None = _spec(None, int, "base sampler steps", lo=1, hi=MAX_STEPS)
    sr_steps: int | None = _spec(None, int, "super-resolution sampler steps", lo=1, hi=MAX_STEPS)
    guidance: float | None = _spec(None, float, "classifier-free guidance scale (1 = off)", lo=0.0, hi=MAX_GUIDANCE)
    sr_guidance: float | None = _spec(None, float, "guidance of the super-resolution stages", lo=0.0, hi=MAX_GUIDANCE)
    sampler: str | None = _spec(None, str, "sampler", choices=tuple(SAMPLERS))
    encoders: str = _spec("both", str, "text encoders (§5.2 ablation)", choices=ENCODER_MODES)
    num_images: int = _spec(1, int, "images, one seed each", lo=1, hi=MAX_IMAGES)
    style_image: Image.Image | None = None  # CLIP-image conditioning, §5.3
    style_strength: float = _spec(1.0, float, "scales the image embedding; 0 = off", lo=0.0, hi=10.0, api=False)
    style_sigma: tuple[float, float] | None = None  # apply the style only for σ in [lo, hi]
    paint: PaintSpec | None = None  # sketch + colour → phrase map, §4.3
    pww_weight: float = _spec(0.4, float, "paint-with-words strength w′ (§4.3)", lo=0.0, hi=10.0, api=False)
    switch_prompt: str | None = None  # prompt switching (Fig. 4): use this prompt below switch_sigma
    switch_sigma: float | None = None
    dynamic_threshold: bool = _spec(True, bool, "Imagen's dynamic thresholding of x0")
    sigma_max: float = _spec(80.0, float, "σ the sampler starts from", lo=1e-3, hi=1000.0, api=False)
    sigma_min: float = _spec(0.002, float, "σ the sampler ends at (below sigma_max)", lo=1e-4, hi=1000.0, api=False)
    attention_maps: bool = False  # record per-token cross-attention maps (Fig. 3)

    def validate(self) -> "GenerationRequest":
        """Raises ``RequestError`` naming the first bad field; returns self."""
        for f in fields(self):
            if "spec" in f.metadata:
                f.metadata["spec"].check(f.name, getattr(self, f.name), optional=f.default is None)
        if self.sigma_min >= self.sigma_max:
            raise RequestError("sigma_min", f"must be below sigma_max ({self.sigma_max}); got {self.sigma_min}")
        if self.style_sigma is not None:
            lo, hi = self.style_sigma
            _float(lo, "style_sigma", 0.0, math.inf)
            if not (math.isfinite(lo) and lo <= hi):
                raise RequestError("style_sigma", f"must be (lo, hi) with 0 <= lo <= hi; got {self.style_sigma}")
        if (self.switch_prompt is None) != (self.switch_sigma is None):
            raise RequestError("switch_sigma", "switch_prompt and switch_sigma go together")
        if self.switch_sigma is not None:
            _float(self.switch_sigma, "switch_sigma", 0.0, 1000.0)
        if self.style_image is not None and not isinstance(self.style_image, Image.Image):
            raise RequestError("style_image", "must be an image")
        return self

    def settings(self) -> dict:
        """JSON-able settings for metadata (images and sketches summarised)."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["style_image"] = None if self.style_image is None else f"{self.style_image.width}x{self.style_image.height}"
        d["paint"] = None if self.paint is None else (self.paint.describe() if hasattr(self.paint, "describe") else repr(self.paint))
        return d


def _int(v, name: str, lo: int, hi: int) -> None:
    if isinstance(v, bool) or not isinstance(v, int):
        raise RequestError(name, f"must be an integer from {lo} to {hi}; got {v!r}")
    if not lo <= v <= hi:
        raise RequestError(name, f"must be from {lo} to {hi}; got {v}")


def _float(v, name: str, lo: float, hi: float) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise RequestError(name, f"must be a number from {lo} to {hi}; got {v!r}")
    if not math.isfinite(v):
        raise RequestError(name, f"must be a finite number from {lo} to {hi}; got {v}")
    if not lo <= v <= hi:
        raise RequestError(name, f"must be from {lo} to {hi}; got {v}")


# The scalar fields every front end derives its flags, bodies and choices from, in order.
REQUEST_FIELDS: dict[str, FieldSpec] = {f.name: f.metadata["spec"] for f in fields(GenerationRequest) if "spec" in f.metadata}
REQUEST_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(GenerationRequest)}
API_FIELDS: tuple[str, ...] = tuple(name for name, spec in REQUEST_FIELDS.items() if spec.api)
