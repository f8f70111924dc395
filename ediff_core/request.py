"""What a user can ask for, validated once for the CLI, the server and the UI alike."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from PIL import Image

from .conditioning import ENCODER_MODES
from .samplers import SAMPLERS

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


@dataclass
class GenerationRequest:
    """One text-to-image request through the cascade. ``None`` means the model's default."""

    prompt: str
    negative_prompt: str = ""  # replaces the all-dropped conditioning in CFG's negative branch
    seed: int = 0  # image k of num_images uses seed + k
    steps: int | None = None  # base sampler steps
    sr_steps: int | None = None  # super-resolution sampler steps
    guidance: float | None = None  # classifier-free guidance w (1 = off)
    sr_guidance: float | None = None
    sampler: str | None = None  # euler | heun | dpmpp_2m
    encoders: str = "both"  # both | t5 | clip (§5.2 ablation)
    num_images: int = 1
    style_image: Image.Image | None = None  # CLIP-image conditioning, §5.3
    style_strength: float = 1.0  # scales the image embedding; 0 = off
    style_sigma: tuple[float, float] | None = None  # apply the style only for σ in [lo, hi]
    paint: Any = None  # paint_with_words.PaintSpec: sketch + colour → phrase map, §4.3
    pww_weight: float = 0.4  # w′ of paint-with-words
    switch_prompt: str | None = None  # prompt switching (Fig. 4): use this prompt below switch_sigma
    switch_sigma: float | None = None
    dynamic_threshold: bool = True  # Imagen's dynamic thresholding of x0
    sigma_max: float = 80.0
    sigma_min: float = 0.002
    attention_maps: bool = False  # record per-token cross-attention maps (Fig. 3)

    def validate(self) -> "GenerationRequest":
        """Raises ``RequestError`` naming the first bad field; returns self."""
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise RequestError("prompt", "must be a non-empty string")
        for name in ("prompt", "negative_prompt"):
            v = getattr(self, name)
            if not isinstance(v, str):
                raise RequestError(name, "must be a string")
            if len(v) > MAX_PROMPT_CHARS:
                raise RequestError(name, f"at most {MAX_PROMPT_CHARS} characters; got {len(v)}")
        _int(self.seed, "seed", 0, MAX_SEED)
        _int(self.num_images, "num_images", 1, MAX_IMAGES)
        for name in ("steps", "sr_steps"):
            if getattr(self, name) is not None:
                _int(getattr(self, name), name, 1, MAX_STEPS)
        for name in ("guidance", "sr_guidance"):
            if getattr(self, name) is not None:
                _float(getattr(self, name), name, 0.0, MAX_GUIDANCE)
        if self.sampler is not None and self.sampler not in SAMPLERS:
            raise RequestError("sampler", f"must be one of {', '.join(SAMPLERS)}; got {self.sampler!r}")
        if self.encoders not in ENCODER_MODES:
            raise RequestError("encoders", f"must be one of {', '.join(ENCODER_MODES)}; got {self.encoders!r}")
        _float(self.style_strength, "style_strength", 0.0, 10.0)
        _float(self.pww_weight, "pww_weight", 0.0, 10.0)
        _float(self.sigma_max, "sigma_max", 1e-3, 1000.0)
        _float(self.sigma_min, "sigma_min", 1e-4, self.sigma_max)
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
