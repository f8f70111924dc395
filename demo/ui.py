"""The Gradio Blocks of the web demo: one ``create_*_tab()`` per tab, ``create_demo()`` for all.

The UI never holds weights: it calls a ``ModelLike`` — ``server.model.Model`` in-process, or
``demo.client.RemoteModel`` over HTTP. Named endpoints for ``gradio_client``: ``/generate``,
``/compare_encoders``, ``/style_transfer``, ``/paint_with_words``; images come back as PNG files
with their settings embedded.
"""

from __future__ import annotations

import math
import random
from contextlib import closing
from typing import Any

import gradio as gr
from PIL import Image, ImageDraw

from ediff_core.ablation import MODE_LABELS
from ediff_core.paint_with_words import PaintSpec
from ediff_core.request import MAX_GUIDANCE, MAX_IMAGES, MAX_SEED, MAX_STEPS, RequestError
from server.model import ModelLike
from server.painting import PALETTE, hex_colour, parse_phrases, phrase_checked
from server.uploads import read_uploaded_file

from .runner import Outputs, build_request, run_single, user_errors

EXAMPLES = [
    "a red circle and two blue stars on old paper",
    "two green hearts at night",
    "a large yellow triangle above a small purple diamond",
    "three pink squares in comic style",
]
LONG_EXAMPLE = "on a striped background, a large red circle at the top left is left of a small blue star at the top right, and a green heart sits at the bottom"
N_OUT = 7  # gallery, files, schedule rows, schedule summary, metadata, attention, status


def _check_range(field: str, value: Any, lo: float | None, hi: float | None) -> None:
    """Gradio's own range check says 'Value 0 is less than minimum value 1.'; ours names the field."""
    if value is None:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (lo is not None and value < lo) or (hi is not None and value > hi):
        raise gr.Error(f"{field}: must be a number from {lo:g} to {hi:g}; got {value!r}", title="Invalid input")


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
    """What every tab needs: the model, the output folder, the model's default settings."""

    def __init__(self, model: ModelLike, outputs: Outputs):
        self.model, self.outputs = model, outputs
        self.info = model.info()
        self.defaults = self.info.get("defaults", {})


def _settings(ctx: Context, encoders: bool = True) -> dict[str, gr.components.Component]:
    """Negative prompt, seed with a randomize button, steps, guidance, sampler (and encoders)."""
    d = ctx.defaults
    out: dict[str, Any] = {}
    out["negative_prompt"] = gr.Textbox(label="Negative prompt", value="", placeholder="optional")
    with gr.Row():
        out["seed"] = named(Number(label="Seed", value=0, precision=0, minimum=0, maximum=MAX_SEED, scale=3), "seed")
        dice = gr.Button("Random seed", scale=1, size="sm")
    dice.click(lambda: random.randint(0, 2**31 - 1), outputs=out["seed"], api_visibility="private")
    out["steps"] = named(Slider(1, MAX_STEPS, value=d.get("steps", 25), step=1, label="Steps"), "steps")
    out["guidance"] = named(Slider(0.0, min(MAX_GUIDANCE, 20.0), value=d.get("guidance", 3.0), step=0.5, label="Guidance (1 = off)"), "guidance")
    out["sampler"] = gr.Dropdown(["dpmpp_2m", "heun", "euler"], value=d.get("sampler", "dpmpp_2m"), label="Sampler")
    if encoders:
        out["encoders"] = gr.Radio(["both", "t5", "clip"], value="both", label="Text encoders")
    return out


def _result_panel(prefix: str, show_attention: bool = True) -> list[gr.components.Component]:
    """Gallery, PNG downloads, σ schedule / experts panel, metadata, attention maps, status."""
    status = gr.Markdown("", elem_id=f"{prefix}-status")
    gallery = gr.Gallery(label="Images", columns=4, height=300, object_fit="contain", elem_id=f"{prefix}-gallery")
    files = gr.File(label="PNG files with embedded settings", file_count="multiple", interactive=False, elem_id=f"{prefix}-files")
    with gr.Accordion("σ schedule and the expert at each step", open=True):
        summary = gr.Markdown()
        schedule = gr.Dataframe(headers=["stage", "step", "sigma", "expert"], datatype=["str", "number", "number", "str"], interactive=False, max_height=240)
    with gr.Accordion("Attention maps", open=True, visible=show_attention):
        attention = gr.Gallery(label="Cross-attention per word", columns=6, height=200)
    with gr.Accordion("Metadata (JSON)", open=False):
        meta = gr.Code(language="json")
    return [gallery, files, schedule, summary, meta, attention, status]


def _stream(outs):
    """Pads (status,) updates with gr.skip() for the other outputs.

    Closing this generator (Gradio does when the client leaves) closes ``outs`` at once, which
    cancels the request; left to the garbage collector, that could take seconds.
    """
    with closing(outs):
        for out in outs:
            yield out if len(out) == N_OUT else (*[gr.skip()] * (N_OUT - 1), out[0])


def create_text_to_image_tab(ctx: Context) -> None:
    with gr.Row():
        with gr.Column(scale=2):
            prompt = gr.Textbox(label="Prompt", lines=2, placeholder=EXAMPLES[0], elem_id="t2i-prompt")
            s = _settings(ctx)
            num_images = named(Slider(1, MAX_IMAGES, value=1, step=1, label="Images"), "num_images")
            attention_maps = gr.Checkbox(label="Show attention maps", value=False)
            button = gr.Button("Generate", variant="primary", elem_id="t2i-generate")
            gr.Examples([[p, k] for k, p in enumerate(EXAMPLES)], inputs=[prompt, s["seed"]])
        with gr.Column(scale=3):
            outs = _result_panel("t2i")

    def generate(prompt: str, negative_prompt: str, seed: float, steps: float, guidance: float, sampler: str, encoders: str, num_images: float, attention_maps: bool, progress: gr.Progress = gr.Progress()):
        """Text to image through the full cascade."""

        def start():
            req = build_request(prompt, negative_prompt, seed, steps, guidance, sampler, encoders, num_images, attention_maps=bool(attention_maps))
            return ctx.model.run(req)

        yield from _stream(run_single(start, ctx.outputs, progress, "t2i"))

    inputs = [prompt, s["negative_prompt"], s["seed"], s["steps"], s["guidance"], s["sampler"], s["encoders"], num_images, attention_maps]
    button.click(generate, inputs, outs, api_name="generate")
    prompt.submit(generate, inputs, outs, api_visibility="private")


def create_encoders_tab(ctx: Context) -> None:
    gr.Markdown("The same prompt and seed with **CLIP only**, **T5 only** and **both** text encoders (§5.2). T5 helps most on long, detailed prompts.")
    with gr.Row():
        with gr.Column(scale=2):
            prompt = gr.Textbox(label="Prompt", lines=3, value=LONG_EXAMPLE)
            s = _settings(ctx, encoders=False)
            button = gr.Button("Compare encoders", variant="primary")
            gr.Examples([[LONG_EXAMPLE], [EXAMPLES[0]]], inputs=[prompt])
        with gr.Column(scale=3):
            status = gr.Markdown("")
            with gr.Row():
                images = [gr.Image(label=MODE_LABELS[m], type="filepath", format="png", interactive=False) for m in ("clip", "t5", "both")]
            files = gr.File(label="PNG files with embedded settings", file_count="multiple", interactive=False)

    def compare_encoders(prompt: str, negative_prompt: str, seed: float, steps: float, guidance: float, sampler: str, progress: gr.Progress = gr.Progress()):
        """CLIP only, T5 only and both encoders on one seed, side by side."""
        modes = ["clip", "t5", "both"]
        results: dict[str, Any] = {}
        done: dict[str, int] = {}
        with user_errors():
            req = build_request(prompt, negative_prompt, seed, steps, guidance, sampler, "both", 1)
            events = ctx.model.compare_encoders(req, modes)
            try:
                for mode, event in events:
                    if hasattr(event, "done"):
                        done[mode] = event.done
                        total = event.total * len(modes)
                        progress((sum(done.values()), total), desc="comparing encoders")
                        yield (*[gr.skip()] * 4, f"{MODE_LABELS[mode]}: {event.stage} step {event.step + 1}/{event.steps} · expert **{event.expert}**")
                    else:
                        results[mode] = event
            finally:
                events.close()
        paths = {m: ctx.outputs.save(results[m], f"encoders_{m}")[0] for m in modes}
        yield (*[paths[m] for m in modes], [paths[m] for m in modes], "done: " + " · ".join(f"{MODE_LABELS[m]}" for m in modes))

    inputs = [prompt, s["negative_prompt"], s["seed"], s["steps"], s["guidance"], s["sampler"]]
    button.click(compare_encoders, inputs, [*images, files, status], api_name="compare_encoders")


def _reference_examples(ctx: Context) -> list[str]:
    """Shapes World renders in three styles: reference images that work with the shipped model."""
    from ediff_core.data.shapes_world import make_scene, render

    refs = []
    for style, objs in (("night", [("star", "yellow", "large", 0.3, 0.3)]), ("comic", [("circle", "red", "large", 0.5, 0.5)]), ("striped", [("square", "blue", "small", 0.7, 0.6)])):
        refs.append(ctx.outputs.save_example(render(make_scene(objs, style=style), 256), f"reference_{style}.png"))
    return refs


def create_style_tab(ctx: Context) -> None:
    gr.Markdown("Condition on the CLIP image embedding of a reference image (§5.3): its background style carries over.")
    with gr.Row():
        with gr.Column(scale=2):
            prompt = gr.Textbox(label="Prompt", lines=2, value="two green hearts")
            reference = gr.File(label="Reference image (PNG, JPEG, WebP)", file_types=["image"], type="filepath")
            preview = gr.Image(label="Reference", interactive=False, height=160)
            strength = named(Slider(0.0, 3.0, value=1.0, step=0.1, label="Style strength"), "style_strength")
            s = _settings(ctx)
            button = gr.Button("Generate with style", variant="primary")
            gr.Examples([[r] for r in _reference_examples(ctx)], inputs=[reference])
        with gr.Column(scale=3):
            outs = _result_panel("style", show_attention=False)

    def show_reference(path: str | None):
        if not path:
            return None
        with user_errors():
            return read_uploaded_file(path, "style_image")

    reference.change(show_reference, reference, preview, api_visibility="private")

    def style_transfer(prompt: str, style_image: str, style_strength: float, negative_prompt: str, seed: float, steps: float, guidance: float, sampler: str, encoders: str, progress: gr.Progress = gr.Progress()):
        """Text to image with the style of a reference image (a file)."""

        def start():
            image = read_uploaded_file(style_image, "style_image")
            req = build_request(prompt, negative_prompt, seed, steps, guidance, sampler, encoders, 1, style_image=image, style_strength=float(style_strength))
            return ctx.model.run(req)

        yield from _stream(run_single(start, ctx.outputs, progress, "style"))

    inputs = [prompt, reference, strength, s["negative_prompt"], s["seed"], s["steps"], s["guidance"], s["sampler"], s["encoders"]]
    button.click(style_transfer, inputs, outs, api_name="style_transfer")


def example_sketch(size: int = 256) -> Image.Image:
    """A red blob on the left and a blue blob on the right: for 'a red circle and a blue star'."""
    img = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(img)
    d.ellipse((size * 0.1, size * 0.3, size * 0.45, size * 0.65), fill=PALETTE["red"])
    d.rectangle((size * 0.6, size * 0.35, size * 0.9, size * 0.65), fill=PALETTE["blue"])
    return img


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


def create_paint_tab(ctx: Context) -> None:
    gr.Markdown("Paint regions with the palette brushes, map each colour to a phrase of the prompt, and generate (§4.3).")
    with gr.Row():
        with gr.Column(scale=2):
            prompt = gr.Textbox(label="Prompt", lines=2, value="a red circle and a blue star", elem_id="pww-prompt")
            white = Image.new("RGB", (256, 256), "white")
            editor = gr.ImageEditor(
                value={"background": white, "layers": [], "composite": None},
                type="pil", image_mode="RGBA", format="png", canvas_size=(256, 256), height=360, sources=(), layers=False, transforms=(),
                brush=gr.Brush(colors=[hex_colour(c) for c in PALETTE.values()], color_mode="fixed", default_size=18),
                label="Sketch", elem_id="pww-editor",
            )
            mapping = gr.Dataframe(value=_mapping_rows(), headers=["colour", "phrase", "strength"], datatype=["str", "str", "number"], type="array", interactive=True, static_columns=[0], label="Colour → phrase of the prompt", elem_id="pww-mapping")
            with gr.Row():
                fill = gr.Button("Fill phrases from the prompt", size="sm")
                load = gr.Button("Load example sketch", size="sm")
            weight = named(Slider(0.0, 2.0, value=0.4, step=0.05, label="Paint strength w′"), "pww_weight")
            s = _settings(ctx, encoders=False)
            button = gr.Button("Paint", variant="primary", elem_id="pww-generate")
            # API-only inputs: a sketch file and a colour → phrase map (JSON or '#RRGGBB=words' lines).
            sketch_file = gr.File(visible=False, type="filepath")
            phrases_text = gr.Textbox(value="", visible=False)
            api_button = gr.Button(visible=False)
        with gr.Column(scale=3):
            outs = _result_panel("pww", show_attention=False)

    fill.click(phrases_from_prompt, prompt, mapping, api_visibility="private")
    load.click(lambda: ({"background": example_sketch(), "layers": [], "composite": None}, "a red circle and a blue star", phrases_from_prompt("a red circle and a blue star")), outputs=[editor, prompt, mapping], api_visibility="private")

    def run(prompt, sketch_fn, phrases_fn, weight, negative_prompt, seed, steps, guidance, sampler, progress):
        def start():
            sketch, phrases = sketch_fn(), phrases_fn()
            req = build_request(prompt, negative_prompt, seed, steps, guidance, sampler, "both", 1, pww_weight=float(weight))
            return ctx.model.paint_with_words(req, sketch, phrases)

        yield from _stream(run_single(start, ctx.outputs, progress, "paint"))

    def paint_ui(prompt: str, editor: dict, mapping: Any, pww_weight: float, negative_prompt: str, seed: float, steps: float, guidance: float, sampler: str, progress: gr.Progress = gr.Progress()):
        phrases = {}

        def sketch():
            """The editor's layers composited over its background (PaintSpec.from_editor)."""
            phrases.update(mapping_from_rows(mapping))
            if not phrases:
                raise RequestError("phrases", "map at least one brush colour to a phrase of the prompt")
            if not editor:
                raise RequestError("sketch", "paint on the canvas first")
            return phrase_checked(PaintSpec.from_editor, editor, phrases).sketch

        yield from run(prompt, sketch, lambda: phrases, pww_weight, negative_prompt, seed, steps, guidance, sampler, progress)

    def paint_with_words(prompt: str, sketch: str, phrases: str, pww_weight: float, negative_prompt: str, seed: float, steps: float, guidance: float, sampler: str, progress: gr.Progress = gr.Progress()):
        """Paint with words from a sketch file and '{"#RRGGBB": "phrase"}' (or '#RRGGBB=phrase' lines)."""
        yield from run(prompt, lambda: read_uploaded_file(sketch, "sketch"), lambda: parse_phrases(phrases or ""), pww_weight, negative_prompt, seed, steps, guidance, sampler, progress)

    rest = [s["negative_prompt"], s["seed"], s["steps"], s["guidance"], s["sampler"]]
    button.click(paint_ui, [prompt, editor, mapping, weight, *rest], outs, api_visibility="private")
    api_button.click(paint_with_words, [prompt, sketch_file, phrases_text, weight, *rest], outs, api_name="paint_with_words")


def create_demo(model: ModelLike, outputs: Outputs | None = None) -> gr.Blocks:
    """All four tabs over one model."""
    ctx = Context(model, outputs or Outputs())
    experts = ", ".join(f"{e['name']} σ∈[{e['sigma_min']:.3g}, {'∞' if e['sigma_max'] is None else format(e['sigma_max'], '.3g')})" for e in ctx.info.get("experts", []))
    with gr.Blocks(title="eDiff-I") as demo:
        gr.Markdown(f"# eDiff-I · {ctx.info.get('name', 'model')}\nText-to-image with an ensemble of expert denoisers. Resolutions {ctx.info.get('resolutions')}; base experts: {experts}.")
        with gr.Tab("Text to image"):
            create_text_to_image_tab(ctx)
        with gr.Tab("Encoders"):
            create_encoders_tab(ctx)
        with gr.Tab("Style transfer"):
            create_style_tab(ctx)
        with gr.Tab("Paint with words"):
            create_paint_tab(ctx)
    demo.queue(default_concurrency_limit=None)
    return demo
