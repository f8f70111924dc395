"""Request bodies of the REST API (pydantic), with the same limits as ``GenerationRequest``.

The constraints appear in the OpenAPI description; a violation is answered 422 with
``{"field", "message"}`` where the message names the allowed range and the value received.
Types are strict: ``"steps": "5"``, ``"steps": true`` or ``"dynamic_threshold": 1`` is refused,
not coerced (a JSON integer is still accepted where a number is expected).
"""

from __future__ import annotations

from dataclasses import MISSING
from typing import Any, Literal

from annotated_types import Ge, Le, MaxLen, MinLen
from pydantic import BaseModel, ConfigDict, Field, create_model

from ediff_core.core.conditioning import ENCODER_MODES
from ediff_core.core.request import API_FIELDS, REQUEST_DEFAULTS, REQUEST_FIELDS, GenerationRequest
from ediff_core.core.samplers import SAMPLERS

from ediff_core.features.paint_with_words import MAX_PHRASE_CHARS, MAX_PHRASES

Sampler = Literal[tuple(SAMPLERS)]  # type: ignore[valid-type]
EncoderMode = Literal[ENCODER_MODES]  # type: ignore[valid-type]


def field_info(name: str) -> Any:
    """A pydantic ``Field`` from the request's ``FieldSpec``: the same default, bounds and help."""
    spec = REQUEST_FIELDS[name]
    kw: dict[str, Any] = {"description": spec.help}
    if spec.kind is str and spec.choices is None:
        kw.update(min_length=int(spec.lo or 0) or None, max_length=None if spec.hi is None else int(spec.hi))
    elif spec.kind in (int, float):
        kw.update(ge=spec.lo, le=spec.hi)
    if spec.kind is float:
        kw["allow_inf_nan"] = False
    default = REQUEST_DEFAULTS[name]
    return Field(**kw) if default is MISSING else Field(default, **kw)


def body_field(name: str) -> tuple[Any, Any]:
    """(annotation, Field) of a request field: choices become a ``Literal``, a ``None`` default optional."""
    spec = REQUEST_FIELDS[name]
    annotation: Any = spec.kind if spec.choices is None else Literal[spec.choices]
    return (annotation | None if REQUEST_DEFAULTS[name] is None else annotation), field_info(name)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    def to_request(self, **extra: Any) -> GenerationRequest:
        """The library request (validated again by the pipeline): every body field the request has."""
        return GenerationRequest(**{k: getattr(self, k) for k in type(self).model_fields if k in REQUEST_FIELDS}, **extra)


# Text to image: every API field of ``GenerationRequest``; ``null`` for steps/guidance/sampler means the model's defaults.
GenerateBody = create_model(
    "GenerateBody",
    __base__=_Strict,
    __doc__="Text to image. ``null`` for steps/guidance/sampler means the model's defaults.",
    **{name: body_field(name) for name in API_FIELDS},
    stream=(bool, Field(False, description="answer NDJSON: progress lines, then the result line")),
)


class CompareBody(GenerateBody):
    """The encoder ablation: one request per mode, same seed."""

    encoders: EncoderMode = Field("both", description="ignored; see modes")
    modes: list[EncoderMode] = Field(["clip", "t5", "both"], min_length=1, max_length=3)


class StyleBody(GenerateBody):
    """Style transfer: a reference image (base64 PNG/JPEG/WebP) whose CLIP embedding sets the style."""

    style_image: str = Field(description="base64 image (a data: URL is accepted); byte and pixel limits apply")
    style_strength: float = field_info("style_strength")


class PaintBody(GenerateBody):
    """Paint with words: a colour sketch and which phrase of the prompt each colour paints."""

    sketch: str = Field(description="base64 image of the colour sketch")
    phrases: dict[str, str] | list[str] = Field(description=f'{{"#RRGGBB": "words of the prompt"}} or ["#RRGGBB=words", ...]; at most {MAX_PHRASES} colours, {MAX_PHRASE_CHARS} characters a phrase')
    pww_weight: float = field_info("pww_weight")

    def phrase_map(self) -> dict[str, str]:
        from ediff_core.features.paint_with_words import parse_phrases

        return parse_phrases(self.phrases)


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
