"""Request bodies of the REST API (pydantic), with the same limits as ``GenerationRequest``.

The constraints appear in the OpenAPI description; a violation is answered 422 with
``{"field", "message"}`` where the message names the allowed range and the value received.
Types are strict: ``"steps": "5"``, ``"steps": true`` or ``"dynamic_threshold": 1`` is refused,
not coerced (a JSON integer is still accepted where a number is expected).
"""

from __future__ import annotations

from typing import Any, Literal

from annotated_types import Ge, Le, MaxLen, MinLen
from pydantic import BaseModel, ConfigDict, Field

from ediff_core.request import MAX_GUIDANCE, MAX_IMAGES, MAX_PROMPT_CHARS, MAX_SEED, MAX_STEPS, GenerationRequest

from .painting import MAX_PHRASE_CHARS, MAX_PHRASES

Sampler = Literal["euler", "heun", "dpmpp_2m"]
EncoderMode = Literal["both", "t5", "clip"]


class GenerateBody(BaseModel):
    """Text to image. ``null`` for steps/guidance/sampler means the model's defaults."""

    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS, description="what to draw")
    negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS, description="used in CFG's negative branch")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="image k uses seed + k")
    steps: int | None = Field(None, ge=1, le=MAX_STEPS, description="base sampler steps")
    sr_steps: int | None = Field(None, ge=1, le=MAX_STEPS, description="super-resolution sampler steps")
    guidance: float | None = Field(None, ge=0.0, le=MAX_GUIDANCE, allow_inf_nan=False, description="classifier-free guidance scale (1 = off)")
    sr_guidance: float | None = Field(None, ge=0.0, le=MAX_GUIDANCE, allow_inf_nan=False)
    sampler: Sampler | None = None
    encoders: EncoderMode = "both"
    num_images: int = Field(1, ge=1, le=MAX_IMAGES)
    dynamic_threshold: bool = True
    stream: bool = Field(False, description="answer NDJSON: progress lines, then the result line")

    def to_request(self, **extra: Any) -> GenerationRequest:
        """The library request (validated again by the pipeline)."""
        keys = ("prompt", "negative_prompt", "seed", "steps", "sr_steps", "guidance", "sr_guidance", "sampler", "encoders", "num_images", "dynamic_threshold")
        return GenerationRequest(**{k: getattr(self, k) for k in keys if hasattr(self, k)}, **extra)


class CompareBody(GenerateBody):
    """The encoder ablation: one request per mode, same seed."""

    encoders: EncoderMode = Field("both", description="ignored; see modes")
    modes: list[EncoderMode] = Field(["clip", "t5", "both"], min_length=1, max_length=3)


class StyleBody(GenerateBody):
    """Style transfer: a reference image (base64 PNG/JPEG/WebP) whose CLIP embedding sets the style."""

    style_image: str = Field(description="base64 image (a data: URL is accepted); byte and pixel limits apply")
    style_strength: float = Field(1.0, ge=0.0, le=10.0, allow_inf_nan=False, description="scales the image embedding; 0 = off")

    def to_request(self, **extra: Any) -> GenerationRequest:
        return super().to_request(style_strength=self.style_strength, **extra)


class PaintBody(GenerateBody):
    """Paint with words: a colour sketch and which phrase of the prompt each colour paints."""

    sketch: str = Field(description="base64 image of the colour sketch")
    phrases: dict[str, str] | list[str] = Field(description=f'{{"#RRGGBB": "words of the prompt"}} or ["#RRGGBB=words", ...]; at most {MAX_PHRASES} colours, {MAX_PHRASE_CHARS} characters a phrase')
    pww_weight: float = Field(0.4, ge=0.0, le=10.0, allow_inf_nan=False, description="paint-with-words strength w′")

    def phrase_map(self) -> dict[str, str]:
        from .painting import parse_phrases

        return parse_phrases(self.phrases)

    def to_request(self, **extra: Any) -> GenerationRequest:
        return super().to_request(pww_weight=self.pww_weight, **extra)


def _allowed(model: type[BaseModel], name: str) -> str:
    """The field's allowed range or choices, read from its constraints."""
    f = model.model_fields.get(name)
    if f is None:
        return ""
    lo = hi = None
    for m in f.metadata:
        if isinstance(m, (Ge, MinLen)):
            lo = getattr(m, "ge", getattr(m, "min_length", None))
        if isinstance(m, (Le, MaxLen)):
            hi = getattr(m, "le", getattr(m, "max_length", None))
    if any(isinstance(m, (MinLen, MaxLen)) for m in f.metadata) and f.annotation is str:
        return f"from {lo or 0} to {hi} characters"
    if lo is not None or hi is not None:
        return f"from {lo} to {hi}"
    return ""


def describe_validation_error(errors: list[dict], model: type[BaseModel] = PaintBody) -> dict:
    """FastAPI's validation errors as ``{"field", "message", "errors"}`` naming the first field."""
    out = []
    for e in errors:
        if e.get("type") == "json_invalid":  # loc is (body, byte offset): the offset is no field
            where = [p for p in e.get("loc", ()) if isinstance(p, int)]
            at = f" at byte {where[0]}" if where else ""
            out.append({"field": "body", "message": f"body: is not valid JSON{at} ({e.get('ctx', {}).get('error', 'malformed')})", "type": "json_invalid"})
            continue
        loc = [str(p) for p in e.get("loc", ()) if p != "body"]
        field = loc[0] if loc else "body"
        allowed = _allowed(model, field) if len(loc) == 1 else ""
        got = e.get("input")
        if isinstance(got, str) and len(got) > 40:
            got = f"{len(got)} characters"
        msg = e.get("msg", "invalid")
        if e.get("type") in ("string_too_long", "string_too_short") and isinstance(e.get("input"), str):
            got = f"{len(e['input'])} characters"
        text = f"{field}: {msg}" + (f"; allowed {allowed}" if allowed else "") + ("" if e.get("type") == "missing" else f"; got {got!r}")
        out.append({"field": ".".join(loc) or "body", "message": text, "type": e.get("type")})
    first = out[0] if out else {"field": "body", "message": "invalid request"}
    return {"field": first["field"], "message": first["message"], "errors": out}
