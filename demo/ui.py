"""The Gradio Blocks of the web demo: one ``create_*_tab()`` per tab, ``create_demo()`` for all.

The UI never holds weights: it calls a ``ModelLike`` — ``server.model.Model`` in-process, or
``demo.client.RemoteModel`` over HTTP. Named endpoints for ``gradio_client``: ``/generate``,
``/compare_encoders``, ``/style_transfer``, ``/paint_with_words``; images come back as PNG files
with their settings embedded.

Each tab follows the convention of text-to-image Spaces: the prompt with its button beside it
(Enter submits), the result large beside (desktop) or under it (phone), the model's vocabulary as
word chips with a notice naming words it does not know, examples that show their cached
results, and every other setting folded into "Advanced settings". Looks: ``demo.theme``.
"""

from __future__ import annotations

import inspect
import json
import math
import random
from contextlib import closing
from dataclasses import replace
from typing import Any, Callable

import gradio as gr
from gradio.exceptions import InvalidPathError
from PIL import Image

from ediff_core.features.ablation import MODE_LABELS
from ediff_core.encoders.base import phrase_char_span
from ediff_core.features.paint_with_words import PALETTE, PaintSpec, hex_colour, parse_phrases
from ediff_core.core.conditioning import ENCODER_MODES
from ediff_core.core.request import MAX_GUIDANCE, MAX_IMAGES, MAX_SEED, MAX_STEPS, RequestError
from ediff_core.core.samplers import SAMPLERS
from server.model import ModelLike
from server.fairness import client_key
from server.uploads import read_uploaded_file

from .examples import EXAMPLES, Example, ExampleCache, example_sketch, png_meta, reference_image
from .runner import Outputs, build_request, run_single, schedule_rows, schedule_summary, user_errors
from .words import Words

N_OUT = 7  # gallery, files, schedule rows, schedule summary, metadata, attention, status


def _num(v: float) -> str:
    """4294967295, not 4.29497e+09; 0.05, not 0.05000000000000000277."""
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def _invalid(message: str) -> gr.Error:
    return gr.Error(message, title="Invalid input", print_exception=False)


def _check_range(field: str, value: Any, lo: float | None, hi: float | None) -> None:
    """Gradio's own range check says 'Value 0 is less than minimum value 1.'; ours names the field.
    Numbers only: "5" and true are refused, not coerced."""
    if value is None:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (lo is not None and value < lo) or (hi is not None and value > hi):
        raise _invalid(f"{field}: must be a number from {_num(lo)} to {_num(hi)}; got {value!r}")


class _FieldErrors:
    """Prefixes Gradio's own preprocessing errors (choices, file types) with the parameter's name."""

    field = "value"  # the parameter's name in errors; set by ``named``

    def preprocess(self, payload: Any) -> Any:
        try:
            return super().preprocess(payload)  # type: ignore[misc]
        except gr.Error as e:
            raise _invalid(f"{self.field}: {e.message}") from None


class Dropdown(_FieldErrors, gr.Dropdown):
    is_template = True


class Radio(_FieldErrors, gr.Radio):
    is_template = True


class File(_FieldErrors, gr.File):
    is_template = True


class Demo(gr.Blocks):
    """``gr.Blocks`` whose errors name parameters: 'not enough inputs' lists them (not components'
    reprs), and a file input naming a path that is not this instance's upload gets one text, the
    same for every path (issue #24.1: it never says whether the path exists, nor echoes it)."""

    async def preprocess_data(self, block_fn: Any, inputs: list[Any], state: Any, explicit_call: bool = False) -> Any:
        try:
            return await super().preprocess_data(block_fn, inputs, state, explicit_call)
        except InvalidPathError:
            field = next((getattr(b, "field", "file") for b, v in zip(block_fn.inputs, inputs) if isinstance(v, dict) and "path" in v), "file")
            raise _invalid(f"{field}: must be a file uploaded to this server with the request; upload the image") from None

    def validate_inputs(self, block_fn: Any, inputs: list[Any]) -> None:
        wanted = block_fn.inputs
        if len(inputs) < len(wanted):
            params = [n for n, q in inspect.signature(block_fn.fn).parameters.items() if q.annotation not in ("gr.Request", "gr.Progress")] if block_fn.fn else []
            names = ", ".join(params[: len(wanted)]) if len(params) >= len(wanted) else f"{len(wanted)} values"
            raise _invalid(f"{block_fn.api_name or 'this endpoint'}: needs {len(wanted)} inputs ({names}); got {len(inputs)}")


class Slider(gr.Slider):
    """``gr.Slider`` whose out-of-range error names the parameter (rendered as a slider)."""

    is_template = True
    field = "value"  # the parameter's name in errors; set by ``named``

    def preprocess(self, payload: float) -> float:
        _check_range(self.field, payload, self.minimum, self.maximum)
        return super().preprocess(payload)


class Number(gr.Number):
    """``gr.Number`` whose out-of-range error names the parameter (rendered as a number box)."""

    is_template = True
    field = "value"  # the parameter's name in errors; set by ``named``

    def preprocess(self, payload: float | None) -> float | int | None:
        _check_range(self.field, payload, self.minimum, self.maximum)
        return super().preprocess(payload)


def named(component: Any, field: str) -> Any:
    """Sets the parameter name a ``Slider``/``Number`` uses in its range errors."""
    component.field = field
    return component


class Context:
    """What every tab needs: the model, the output folder, the model's defaults, its vocabulary
    and the cached results of the examples."""

    def __init__(self, model: ModelLike, outputs: Outputs, trusted_header: str | None = None):
        self.model, self.outputs = model, outputs
        self.trusted_header = trusted_header
        self.info = model.info()
        self.defaults = self.info.get("defaults", {})
        self.name = self.info.get("name", "the model")
        self.words = Words(model, self.name)
        self.examples = ExampleCache(model, outputs).prepare()

    def client(self, request: gr.Request | None) -> str | None:
        """Whose share a UI or gradio_client request counts against (``server.fairness``)."""
        if request is None:
            return None
        host = request.client.host if request.client else None
        return client_key(host, request.headers, self.trusted_header)

    def cached(self, ex: Example) -> tuple:
        """The result panel's outputs for an example, read from its cached PNG: no model run."""
        paths = self.examples.paths(ex)
        metas = [png_meta(p) for p in paths]
        meta = metas[0]
        status = f"Example result, cached ({self.examples.source}): no model run."  # PNGs carry no timings
        gallery = [(p, f"seed {m.get('seed')}") for p, m in zip(paths, metas)]
        return (gallery, paths, schedule_rows(meta), schedule_summary(meta), json.dumps(metas, indent=1, default=str), [], status)


# ---- building blocks shared by the tabs ---------------------------------------------------------


def _prompt_row(prefix: str, value: str, button_label: str, max_lines: int = 4) -> tuple[gr.Textbox, gr.Button]:
    """The prompt with its button beside it; Enter submits (Shift+Enter is a new line)."""
    with gr.Row(equal_height=True, elem_classes=["ediff-prompt-row", "ediff-first"]):
        prompt = gr.Textbox(label="Prompt", show_label=False, container=False, value=value, placeholder="Describe the picture with the words below", lines=1, max_lines=max_lines, scale=5, min_width=180, elem_id=f"{prefix}-prompt", elem_classes="ediff-prompt")
        button = gr.Button(button_label, variant="primary", scale=1, min_width=96, elem_id=f"{prefix}-generate")
    return prompt, button


def _words(ctx: Context, prompt: gr.Textbox, prefix: str) -> None:
    """The unknown-word notice under the prompt, and the vocabulary chips (``demo.words``)."""
    notice = gr.Markdown(ctx.words.notice(prompt.value or ""), elem_id=f"{prefix}-notice", elem_classes=["ediff-notice", "ediff-first"])
    if ctx.words.checks:
        prompt.change(ctx.words.notice, prompt, notice, api_visibility="private", show_progress="hidden", queue=False, trigger_mode="always_last")
    with gr.Accordion("Shapes World words: click one to add it", open=True, elem_id=f"{prefix}-words", elem_classes="ediff-words"):
        gr.HTML(Words.chips_html())


def _seed(ex: Example) -> gr.components.Component:
    """Seed and its dice button on one row."""
    with gr.Row(equal_height=True):
        seed = named(Number(label="Seed", value=ex.seed, precision=0, minimum=0, maximum=MAX_SEED, scale=4, min_width=120), "seed")
        dice = gr.Button("🎲 Random", scale=1, min_width=90, size="sm")
    dice.click(lambda: random.randint(0, 2**31 - 1), outputs=seed, api_visibility="private")
    return seed


def _advanced(ctx: Context, encoders: bool = True) -> dict[str, gr.components.Component]:
    """Negative prompt, steps, guidance, sampler (and encoders), folded away."""
    d = ctx.defaults
    out: dict[str, Any] = {}
    out["negative_prompt"] = gr.Textbox(label="Negative prompt", value="", placeholder="optional")
    out["steps"] = named(Slider(1, MAX_STEPS, value=d.get("steps", 25), step=1, label="Steps"), "steps")
    out["guidance"] = named(Slider(0.0, min(MAX_GUIDANCE, 20.0), value=d.get("guidance", 3.0), step=0.5, label="Guidance (1 = off)"), "guidance")
    out["sampler"] = named(Dropdown(list(SAMPLERS), value=d.get("sampler", "dpmpp_2m"), label="Sampler"), "sampler")
    if encoders:
        out["encoders"] = named(Radio(list(ENCODER_MODES), value="both", label="Text encoders"), "encoders")
    return out


def _result_panel(ctx: Context, prefix: str, ex: Example, show_attention: bool = True) -> list[gr.components.Component]:
    """Status (progress, time taken), the result as whole squares, PNG downloads, σ schedule /
    experts, attention maps, metadata; opens on the cached result of the tab's first example."""
    first = ctx.cached(ex)
    status = gr.Markdown(first[6], elem_id=f"{prefix}-status", elem_classes="ediff-status")
    gallery = gr.Gallery(first[0], label="Result", columns=2, object_fit="contain", format="png", buttons=["download", "fullscreen"], elem_id=f"{prefix}-gallery", elem_classes="ediff-result")
    files = gr.File(first[1], label="PNG files with embedded settings", file_count="multiple", interactive=False, elem_id=f"{prefix}-files")
    with gr.Accordion("σ schedule and the expert at each step", open=False):
        summary = gr.Markdown(first[3])
        schedule = gr.Dataframe(first[2], headers=["stage", "step", "sigma", "expert"], datatype=["str", "number", "number", "str"], interactive=False, max_height=240)
    with gr.Accordion("Attention maps", open=False, visible=show_attention):
        attention = gr.Gallery(label="Cross-attention per word", columns=6, object_fit="contain", elem_classes="ediff-attention")
    with gr.Accordion("Metadata (JSON)", open=False):
        meta = gr.Code(first[4], language="json")
    return [gallery, files, schedule, summary, meta, attention, status]


def _field_errors(check: Callable[..., Any], fields: list[str | None]) -> Callable[..., list[dict]]:
    """A Gradio validator: runs ``check`` on the event's inputs before the event is queued; a
    ``RequestError`` naming one of ``fields`` (the inputs' parameter names, in order) is shown
    under that input. Other errors are left to the event itself (a toast, as before)."""

    def validator(*values: Any) -> list[dict]:
        message, bad = "", None
        try:
            check(*values)
        except RequestError as e:
            if e.field in fields:
                message, bad = str(e), e.field
        return [gr.validate(bad is None or name != bad, message if bad is not None and name == bad else "") for name in fields]

    return validator


def _wire(button: gr.Button, prompt: gr.Textbox, fn: Callable, inputs: list, outputs: list, api_name: str, validator: Callable) -> None:
    """The button and Enter in the prompt run ``fn`` with field errors shown under their inputs.

    The named endpoint for ``gradio_client`` is the same function on the same inputs, bound to a
    hidden button without the validator: Gradio runs a validator on preprocessed inputs, and an
    out-of-range ``Slider``/``Number`` there would come back as a bare HTTP 400 instead of the
    ``gr.Error`` naming the field.
    """
    gr.Button(visible=False).click(fn, inputs, outputs, api_name=api_name)  # first: it keeps the name
    button.click(fn, inputs, outputs, api_visibility="private", validator=validator)
    prompt.submit(fn, inputs, outputs, api_visibility="private", validator=validator)


def _stream(outs):
    """Pads (status,) updates with gr.skip() for the other outputs.

    Closing this generator (Gradio does when the client leaves) closes ``outs`` at once, which
    cancels the request; left to the garbage collector, that could take seconds.
    """
    with closing(outs):
        for out in outs:
            yield out if len(out) == N_OUT else (*[gr.skip()] * (N_OUT - 1), out[0])


def _examples(ctx: Context, tab: str, inputs: list, outputs: list, values: Callable[[Example], list], show: Callable[[Example], tuple]) -> None:
    """The tab's examples, each with its cached result as a thumbnail; a click loads the example's
    inputs and shows its cached result (``show``), without running the model."""
    exs = EXAMPLES[tab]
    thumb = gr.Image(type="filepath", label="Result", visible=False, elem_classes="ediff-result")

    def pick(*row: Any) -> tuple:
        for ex in exs:
            if list(values(ex)) == _comparable(row[1:], values(ex)):
                return show(ex)
        return show(exs[0])

    gr.Examples([[ctx.examples.paths(ex)[-1], *values(ex)] for ex in exs], inputs=[thumb, *inputs], outputs=outputs, fn=pick, run_on_click=True, cache_examples=False,
                api_visibility="private", label="Examples: click one to see its result (cached, no model run)", elem_id=f"{tab}-examples")


def _comparable(got: tuple, want: list) -> list:
    """Example values as the event received them (numbers as floats, files as copied paths)."""
    out = []
    for g, w in zip(got, want):
        if isinstance(w, int) and isinstance(g, (int, float)):
            g = int(g)
        elif isinstance(w, str) and isinstance(g, str) and w.endswith(".png"):
            g = w if g.endswith("/" + w.rsplit("/", 1)[-1]) else g
        out.append(g)
    return out


# ---- the tabs -----------------------------------------------------------------------------------


def create_text_to_image_tab(ctx: Context) -> None:
    ex = EXAMPLES["t2i"][0]
    with gr.Row(elem_classes="ediff-tab-row"):
        with gr.Column(scale=2, min_width=320, elem_classes="ediff-controls"):
            prompt, button = _prompt_row("t2i", ex.prompt, "Generate")
            _words(ctx, prompt, "t2i")
            seed = _seed(ex)
            with gr.Accordion("Advanced settings", open=False):
                s = _advanced(ctx)
                num_images = named(Slider(1, MAX_IMAGES, value=1, step=1, label="Images"), "num_images")
                attention_maps = gr.Checkbox(label="Show attention maps", value=False)
        with gr.Column(scale=3, min_width=320, elem_classes="ediff-results"):
            outs = _result_panel(ctx, "t2i", ex)
    _examples(ctx, "t2i", [prompt, seed], outs, lambda e: [e.prompt, e.seed], ctx.cached)

    def generate(prompt: str, negative_prompt: str, seed: float, steps: float, guidance: float, sampler: str, encoders: str, num_images: float, attention_maps: bool, request: gr.Request, progress: gr.Progress = gr.Progress()):
        """Text to image through the full cascade."""

        def start():
            req = build_request(prompt, negative_prompt, seed, steps, guidance, sampler, encoders, num_images, attention_maps=bool(attention_maps))
            return ctx.model.run(req, client=ctx.client(request))

        yield from _stream(run_single(start, ctx.outputs, progress, "t2i"))

    inputs = [prompt, s["negative_prompt"], seed, s["steps"], s["guidance"], s["sampler"], s["encoders"], num_images, attention_maps]
    names = ["prompt", "negative_prompt", "seed", "steps", "guidance", "sampler", "encoders", "num_images", None]
    check = _field_errors(lambda *v: build_request(*v[:8]).validate(), names)
    _wire(button, prompt, generate, inputs, outs, "generate", check)


def create_encoders_tab(ctx: Context) -> None:
    ex = EXAMPLES["encoders"][0]
    # The three results side by side across the page (each a whole square, ≥ 384 px at 1366 px
    # wide; stacked full-width on a phone), the settings under them.
    prompt, button = _prompt_row("enc", ex.prompt, "Compare", max_lines=6)
    first = ctx.examples.paths(ex)
    status = gr.Markdown(ctx.cached(ex)[6], elem_id="enc-status", elem_classes="ediff-status")
    with gr.Row(elem_classes="ediff-compare"):
        images = [gr.Image(first[k], label=MODE_LABELS[m], type="filepath", format="png", interactive=False, min_width=280, buttons=["download", "fullscreen"], elem_id=f"enc-{m}", elem_classes=["ediff-result", "ediff-image"]) for k, m in enumerate(("clip", "t5", "both"))]
    with gr.Row():
        with gr.Column(scale=1, min_width=320):
            gr.Markdown("One prompt and seed through **CLIP only**, **T5 only** and **both** text encoders (§5.2): T5 carries ediff-mini's alignment.")
            _words(ctx, prompt, "enc")
            seed = _seed(ex)
            with gr.Accordion("Advanced settings", open=False):
                s = _advanced(ctx, encoders=False)
        with gr.Column(scale=1, min_width=320):
            files = gr.File(first, label="PNG files with embedded settings", file_count="multiple", interactive=False, elem_id="enc-files")
    outs = [*images, files, status]
    _examples(ctx, "encoders", [prompt, seed], outs, lambda e: [e.prompt, e.seed], lambda e: (*ctx.examples.paths(e), ctx.examples.paths(e), ctx.cached(e)[6]))

    def compare_encoders(prompt: str, negative_prompt: str, seed: float, steps: float, guidance: float, sampler: str, request: gr.Request, progress: gr.Progress = gr.Progress()):
        """CLIP only, T5 only and both encoders on one seed, side by side."""
        modes = ["clip", "t5", "both"]
        results: dict[str, Any] = {}
        done: dict[str, int] = {}
        with user_errors():
            req = build_request(prompt, negative_prompt, seed, steps, guidance, sampler, "both", 1)
            events = ctx.model.compare_encoders(req, modes, client=ctx.client(request))
            try:
                for mode, event in events:
                    if hasattr(event, "done"):
                        done[mode] = event.done
                        total = event.total * len(modes)
                        progress((sum(done.values()), total), desc=f"{MODE_LABELS[mode]}: {event.stage} step {event.step + 1}/{event.steps} · expert {event.expert}")
                        yield (*[gr.skip()] * 4, f"{MODE_LABELS[mode]}: {event.stage} step {event.step + 1}/{event.steps} · expert **{event.expert}**")
                    else:
                        results[mode] = event
            finally:
                events.close()
        paths = {m: ctx.outputs.save(results[m], f"encoders_{m}")[0] for m in modes}
        took = sum(results[m].timings.get("total", 0) for m in modes)
        yield (*[paths[m] for m in modes], [paths[m] for m in modes], f"done in {took:.2f} s: " + " · ".join(f"{MODE_LABELS[m]}" for m in modes))

    inputs = [prompt, s["negative_prompt"], seed, s["steps"], s["guidance"], s["sampler"]]
    check = _field_errors(lambda *v: build_request(*v, "both", 1).validate(), ["prompt", "negative_prompt", "seed", "steps", "guidance", "sampler"])
    _wire(button, prompt, compare_encoders, inputs, outs, "compare_encoders", check)


def create_style_tab(ctx: Context) -> None:
    ex = EXAMPLES["style"][0]
    refs = {e.reference: ctx.outputs.save_example(reference_image(e.reference), f"reference_{e.reference}.png") for e in EXAMPLES["style"]}
    with gr.Row(elem_classes="ediff-tab-row"):
        with gr.Column(scale=2, min_width=320, elem_classes="ediff-controls"):
            prompt, button = _prompt_row("style", ex.prompt, "Generate")
            _words(ctx, prompt, "style")
            gr.Markdown("Conditions on the CLIP image embedding of a reference image (§5.3): its background style carries over.")
            with gr.Row(equal_height=True):
                reference = named(File(refs[ex.reference], label="Reference image (PNG, JPEG, WebP)", file_types=[".png", ".jpg", ".jpeg", ".webp"], type="filepath", elem_id="style-reference", min_width=160), "style_image")
                preview = gr.Image(refs[ex.reference], label="Reference", interactive=False, height=160, min_width=120, elem_classes="ediff-result")
            strength = named(Slider(0.0, 3.0, value=1.0, step=0.1, label="Style strength"), "style_strength")
            seed = _seed(ex)
            with gr.Accordion("Advanced settings", open=False):
                s = _advanced(ctx)
        with gr.Column(scale=3, min_width=320, elem_classes="ediff-results"):
            outs = _result_panel(ctx, "style", ex, show_attention=False)
    _examples(ctx, "style", [reference, prompt, seed], outs, lambda e: [refs[e.reference], e.prompt, e.seed], ctx.cached)

    def show_reference(path: str | None):
        if not path:
            return None
        with user_errors():
            return read_uploaded_file(path, "style_image")

    reference.change(show_reference, reference, preview, api_visibility="private")

    def style_transfer(prompt: str, style_image: str, style_strength: float, negative_prompt: str, seed: float, steps: float, guidance: float, sampler: str, encoders: str, request: gr.Request, progress: gr.Progress = gr.Progress()):
        """Text to image with the style of a reference image (a file)."""

        def start():
            req = build_request(prompt, negative_prompt, seed, steps, guidance, sampler, encoders, 1, style_strength=float(style_strength))
            read = lambda r: replace(r, style_image=read_uploaded_file(style_image, "style_image"))  # noqa: E731 in the slot
            return ctx.model.run(req, client=ctx.client(request), prepare=read)

        yield from _stream(run_single(start, ctx.outputs, progress, "style"))

    def check(prompt, style_image, style_strength, negative_prompt, seed, steps, guidance, sampler, encoders):
        build_request(prompt, negative_prompt, seed, steps, guidance, sampler, encoders, 1).validate()
        if not style_image:
            raise RequestError("style_image", "choose a reference image (or an example below)")

    inputs = [prompt, reference, strength, s["negative_prompt"], seed, s["steps"], s["guidance"], s["sampler"], s["encoders"]]
    validator = _field_errors(check, ["prompt", "style_image", "style_strength", "negative_prompt", "seed", "steps", "guidance", "sampler", "encoders"])
    _wire(button, prompt, style_transfer, inputs, outs, "style_transfer", validator)


def _mapping_rows(phrases: dict[str, str] | None = None) -> list[list[Any]]:
    """One row per palette brush: 'name #rrggbb', its phrase, its strength (1 = as w′)."""
    phrases = phrases or {}
    return [[f"{name} {hex_colour(rgb)}", phrases.get(hex_colour(rgb), ""), 1.0] for name, rgb in PALETTE.items()]


def phrases_from_prompt(prompt: str) -> list[list[str]]:
    """Fills each colour's phrase with '<colour> <next word>' where the prompt has it."""
    words = [w.strip(".,;:!?") for w in (prompt or "").split()]
    found = {}
    for i, w in enumerate(words):
        if w.lower() in PALETTE and i + 1 < len(words):
            found[hex_colour(PALETTE[w.lower()])] = f"{w} {words[i + 1]}"
    return _mapping_rows(found)


def mapping_from_rows(rows: Any) -> dict[str, str]:
    """The Dataframe's rows (colour 'name #rrggbb', phrase, strength) as {#rrggbb: 'phrase@s'}."""
    if hasattr(rows, "values"):
        rows = rows.values.tolist()
    out = {}
    for row in rows or []:
        phrase = str(row[1] or "").strip() if len(row) >= 2 else ""
        if not phrase:
            continue
        strength = row[2] if len(row) >= 3 and row[2] not in (None, "") else 1.0
        try:
            strength = float(strength)
        except (TypeError, ValueError):
            raise RequestError("phrases", f"the strength of '{phrase}' must be a number; got {strength!r}") from None
        out[str(row[0]).split()[-1]] = phrase if strength == 1.0 else f"{phrase}@{strength:g}"
    return parse_phrases(out)


def _editor_value(sketch: Image.Image | None) -> dict:
    return {"background": sketch or Image.new("RGB", (256, 256), "white"), "layers": [], "composite": None}


def create_paint_tab(ctx: Context) -> None:
    ex = EXAMPLES["paint"][0]
    with gr.Row(elem_classes="ediff-tab-row"):
        with gr.Column(scale=2, min_width=320, elem_classes="ediff-controls"):
            prompt, button = _prompt_row("pww", ex.prompt, "Paint")
            _words(ctx, prompt, "pww")
            gr.Markdown("Paint regions with the palette brushes, map each colour to a phrase of the prompt, and generate (§4.3).")
            editor = gr.ImageEditor(
                value=_editor_value(example_sketch()),
                type="pil", image_mode="RGBA", format="png", canvas_size=(256, 256), height=360, sources=(), layers=False, transforms=(),
                brush=gr.Brush(colors=[hex_colour(c) for c in PALETTE.values()], color_mode="fixed", default_size=18),
                label="Sketch", elem_id="pww-editor",
            )
            mapping = gr.Dataframe(value=phrases_from_prompt(ex.prompt), headers=["colour", "phrase", "strength"], datatype=["str", "str", "number"], type="array", interactive=True, static_columns=[0], label="Colour → phrase of the prompt", elem_id="pww-mapping")
            with gr.Row():
                fill = gr.Button("Fill phrases from the prompt", size="sm")
                load = gr.Button("Load example sketch", size="sm")
                clear = gr.Button("Blank canvas", size="sm", elem_id="pww-clear")
            weight = named(Slider(0.0, 2.0, value=0.4, step=0.05, label="Paint strength w′"), "pww_weight")
            seed = _seed(ex)
            with gr.Accordion("Advanced settings", open=False):
                s = _advanced(ctx, encoders=False)
            # API-only inputs: a sketch file and a colour → phrase map (JSON or '#RRGGBB=words' lines).
            sketch_file = named(File(visible=False, type="filepath"), "sketch")
            phrases_text = gr.Textbox(value="", visible=False)
            api_button = gr.Button(visible=False)
        with gr.Column(scale=3, min_width=320, elem_classes="ediff-results"):
            outs = _result_panel(ctx, "pww", ex, show_attention=False)
    _examples(ctx, "paint", [prompt, seed], [editor, mapping, *outs], lambda e: [e.prompt, e.seed], lambda e: (_editor_value(example_sketch()), phrases_from_prompt(e.prompt), *ctx.cached(e)))

    fill.click(phrases_from_prompt, prompt, mapping, api_visibility="private")
    load.click(lambda p: (_editor_value(example_sketch()), ex.prompt, phrases_from_prompt(ex.prompt)), prompt, [editor, prompt, mapping], api_visibility="private")
    clear.click(lambda: (_editor_value(None), _mapping_rows()), outputs=[editor, mapping], api_visibility="private")

    def run(prompt, sketch_fn, phrases_fn, weight, negative_prompt, seed, steps, guidance, sampler, request, progress):
        """The sketch is read (``sketch_fn``) in the request's slot, once the server admits it."""

        def start():
            phrases = phrases_fn()
            req = build_request(prompt, negative_prompt, seed, steps, guidance, sampler, "both", 1, pww_weight=float(weight))
            return ctx.model.paint_with_words(req, sketch_fn, phrases, client=ctx.client(request))

        yield from _stream(run_single(start, ctx.outputs, progress, "paint"))

    def paint_ui(prompt: str, editor: dict, mapping: Any, pww_weight: float, negative_prompt: str, seed: float, steps: float, guidance: float, sampler: str, request: gr.Request, progress: gr.Progress = gr.Progress()):
        def phrases():
            out = mapping_from_rows(mapping)
            if not out:
                raise RequestError("phrases", "map at least one brush colour to a phrase of the prompt")
            if not editor:
                raise RequestError("sketch", "paint on the canvas first")
            return out

        def sketch():
            """The editor's layers composited over its background (PaintSpec.from_editor)."""
            return PaintSpec.from_editor(editor, mapping_from_rows(mapping)).sketch

        yield from run(prompt, sketch, phrases, pww_weight, negative_prompt, seed, steps, guidance, sampler, request, progress)

    def paint_with_words(prompt: str, sketch: str, phrases: str, pww_weight: float, negative_prompt: str, seed: float, steps: float, guidance: float, sampler: str, request: gr.Request, progress: gr.Progress = gr.Progress()):
        """Paint with words from a sketch file and '{"#RRGGBB": "phrase"}' (or '#RRGGBB=phrase' lines)."""
        yield from run(prompt, lambda: read_uploaded_file(sketch, "sketch"), lambda: parse_phrases(phrases or ""), pww_weight, negative_prompt, seed, steps, guidance, sampler, request, progress)

    def check(prompt, editor, mapping, pww_weight, negative_prompt, seed, steps, guidance, sampler):
        build_request(prompt, negative_prompt, seed, steps, guidance, sampler, "both", 1).validate()
        phrases = mapping_from_rows(mapping)
        if not phrases:
            raise RequestError("phrases", "map at least one brush colour to a phrase of the prompt")
        for phrase in phrases.values():
            if phrase_char_span(prompt, phrase.split("@")[0]) is None:
                raise RequestError("phrases", f"phrase '{phrase.split('@')[0]}' is not in the prompt '{prompt}'")

    rest = [s["negative_prompt"], seed, s["steps"], s["guidance"], s["sampler"]]
    validator = _field_errors(check, ["prompt", None, "phrases", "pww_weight", "negative_prompt", "seed", "steps", "guidance", "sampler"])
    button.click(paint_ui, [prompt, editor, mapping, weight, *rest], outs, api_visibility="private", validator=validator)
    prompt.submit(paint_ui, [prompt, editor, mapping, weight, *rest], outs, api_visibility="private", validator=validator)
    api_button.click(paint_with_words, [prompt, sketch_file, phrases_text, weight, *rest], outs, api_name="paint_with_words")


# ---- the page -----------------------------------------------------------------------------------

INTRO = (
    "**eDiff-I** is NVIDIA's text-to-image diffusion model whose denoiser is an ensemble of experts, one per range of noise levels. "
    "This demo runs **{name}**, a small eDiff-I trained from scratch on *Shapes World*, a world of coloured shapes: it knows only its words."
)


def _about(ctx: Context) -> None:
    """The model's details, folded: stages, the base experts with their σ intervals, encoders."""
    info = ctx.info
    rows = ["| expert | σ from | σ to | parameters |", "|---|---|---|---|"]
    for e in info.get("experts", []):
        hi = "∞" if e["sigma_max"] is None else format(e["sigma_max"], ".3g")
        rows.append(f"| {e['name']} | {e['sigma_min']:.3g} | {hi} | {e.get('parameters', 0) / 1e6:.1f} M |")
    enc = info.get("encoders", {})
    encoders = ", ".join(f"{k} ({v.get('parameters', 0) / 1e6:.1f} M)" for k, v in enc.items())
    with gr.Accordion("About the model", open=False, elem_id="about"):
        gr.Markdown(
            f"**{ctx.name}** makes {' → '.join(f'{r}×{r}' for r in info.get('resolutions', []))} images: a base stage of σ-routed experts (§4.1) and super-resolution. "
            f"Base experts, each denoising its σ interval:\n\n" + "\n".join(rows) + f"\n\nEncoders: {encoders}. Device: {info.get('device', '?')}, backend {info.get('backend', '?')}. "
            "Its measured figures and how it was trained: the model card, `checkpoints/ediff-mini/README.md`."
        )


def create_demo(model: ModelLike, outputs: Outputs | None = None, trusted_header: str | None = None) -> gr.Blocks:
    """All four tabs over one model (mount with ``demo.theme.page_options()`` for the looks).

    ``trusted_header``: behind a proxy, the header whose last address is the client's (``server.fairness``).
    """
    ctx = Context(model, outputs or Outputs(), trusted_header)
    with Demo(title=f"eDiff-I · {ctx.name}") as demo:
        gr.Markdown(f"# eDiff-I · {ctx.name}\n" + INTRO.format(name=ctx.name), elem_classes="ediff-header")
        with gr.Tab("Text to image"):
            create_text_to_image_tab(ctx)
        with gr.Tab("Encoders"):
            create_encoders_tab(ctx)
        with gr.Tab("Style transfer"):
            create_style_tab(ctx)
        with gr.Tab("Paint with words"):
            create_paint_tab(ctx)
        _about(ctx)
    demo.queue(default_concurrency_limit=None)
    return demo
