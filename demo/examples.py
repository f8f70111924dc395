"""The demo's examples and their cached results: a click shows a result without a model run.

Every tab's examples are prompts the shipped ediff-mini draws right (``check_alignment`` on the
seeds below; ``python -m demo.examples`` regenerates the results into ``demo/assets/examples/``
and records the verdicts in its ``manifest.json``). At start-up ``ExampleCache.prepare`` uses
those shipped PNGs when the manifest's fingerprint matches the loaded model, and otherwise (another
model, e.g. the tiny test model) runs each example once through the model, before serving.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from PIL import Image, ImageDraw

from ediff_core.core.images import save_png
from ediff_core.features.paint_with_words import PALETTE, hex_colour
from ediff_core.pipeline import GenerationResult
from ediff_core.core.request import GenerationRequest
from server.model import ModelLike

from .runner import Outputs
from .theme import ASSETS

log = logging.getLogger("ediff.demo")
SHIPPED = ASSETS / "examples"
ENCODER_MODES = ("clip", "t5", "both")


@dataclass(frozen=True)
class Example:
    """One example of a tab, run with the model's default settings.

    Attributes:
        tab: "t2i", "encoders", "style" or "paint".
        prompt: the prompt, in Shapes World's vocabulary.
        seed: the seed whose result the shipped model gets right.
        reference: style tab: the Shapes World style whose render is the reference image.
        phrases: paint tab: brush colour name -> phrase of the prompt, painted with ``example_sketch``.
    """

    tab: str
    prompt: str
    seed: int
    reference: str | None = None
    phrases: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> str:
        extra = self.reference or "-".join(c for c, _ in self.phrases)
        return f"{self.tab}_{self.prompt.replace(' ', '-')}_{self.seed}" + (f"_{extra}" if extra else "")


EXAMPLES: dict[str, list[Example]] = {
    "t2i": [
        Example("t2i", "a blue square in comic style", 0),
        Example("t2i", "an orange heart on a striped background", 1),
        Example("t2i", "a large yellow star on old paper", 0),
        Example("t2i", "a cyan circle at night", 1),
    ],
    "encoders": [Example("encoders", "a green circle", 1), Example("encoders", "a red circle at night", 1)],
    "style": [Example("style", "a red circle", 1, reference="night"), Example("style", "a red circle", 1, reference="striped"), Example("style", "a red circle", 1, reference="comic")],
    "paint": [Example("paint", "a red circle and a blue star", 0, phrases=(("red", "red circle"), ("blue", "blue star")))],
}


def reference_image(style: str, size: int = 256) -> Image.Image:
    """A Shapes World render in ``style``: a reference image the shipped CLIP image tower knows."""
    from ediff_core.data.shapes_world import make_scene, render

    return render(make_scene([("star", "yellow", "large", 0.3, 0.3), ("square", "blue", "small", 0.7, 0.65)], style=style), size)


def example_sketch(size: int = 256) -> Image.Image:
    """A red blob on the left and a blue blob on the right: for 'a red circle and a blue star'."""
    img = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(img)
    d.ellipse((size * 0.1, size * 0.3, size * 0.45, size * 0.65), fill=PALETTE["red"])
    d.rectangle((size * 0.6, size * 0.35, size * 0.9, size * 0.65), fill=PALETTE["blue"])
    return img


def fingerprint(info: dict) -> str:
    """Which model made a result: its name, experts with σ intervals, and training record."""
    key = {k: info.get(k) for k in ("name", "stages", "card", "defaults")}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _result(events: Iterator) -> GenerationResult:
    result = None
    for event in events:
        result = event if isinstance(event, GenerationResult) else result
    if result is None:
        raise RuntimeError("the model ended without a result")
    return result


def run_example(model: ModelLike, ex: Example) -> list[GenerationResult]:
    """The example's results through ``model`` (three, CLIP / T5 / both, for the encoders tab)."""
    req = GenerationRequest(ex.prompt, seed=ex.seed)
    if ex.tab == "encoders":
        results: dict[str, GenerationResult] = {}
        for mode, event in model.compare_encoders(req, ENCODER_MODES):
            if isinstance(event, GenerationResult):
                results[mode] = event
        return [results[m] for m in ENCODER_MODES]
    if ex.tab == "style":
        req.style_image = reference_image(ex.reference or "night")
        return [_result(model.run(req))]
    if ex.tab == "paint":
        phrases = {hex_colour(PALETTE[c]): p for c, p in ex.phrases}
        return [_result(model.paint_with_words(req, example_sketch(), phrases))]
    return [_result(model.run(req))]


def png_meta(path: str | Path) -> dict:
    """The settings a PNG of this project carries (its 'ediff' JSON text chunk)."""
    with Image.open(path) as img:
        return json.loads(img.text.get("ediff", "{}"))


class ExampleCache:
    """The result PNGs of every example, made once per process (or shipped) and never pruned.

    Args:
        model: the model the demo serves; results are made with it unless shipped for it.
        outputs: the demo's output folder; cached PNGs go to its ``examples`` folder.
        shipped: folder of shipped results with a ``manifest.json`` (``python -m demo.examples``).
    """

    def __init__(self, model: ModelLike, outputs: Outputs, shipped: Path = SHIPPED):
        self.model, self.outputs, self.shipped = model, outputs, Path(shipped)
        self.files: dict[str, list[str]] = {}
        self.source = ""

    def prepare(self) -> "ExampleCache":
        """Copies the shipped results if they are this model's; else runs every example once."""
        manifest = self.shipped / "manifest.json"
        shipped = json.loads(manifest.read_text()) if manifest.exists() else {}
        folder = self.outputs.root / "examples"
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        if shipped.get("fingerprint") == fingerprint(self.model.info()):
            for ex in all_examples():
                names = shipped["examples"][ex.key]["files"]
                self.files[ex.key] = [str(shutil.copy(self.shipped / n, folder / n)) for n in names]
            self.source = "shipped with the model"
            return self
        for ex in all_examples():
            results = run_example(self.model, ex)
            self.files[ex.key] = [str(save_png(r.images[0], folder / f"{ex.key}_{k}.png", r.metadata[0])) for k, r in enumerate(results)]
        self.source = "made at start-up"
        log.info("made %d example results in %.1f s (none shipped for this model)", len(self.files), time.perf_counter() - t0)
        return self

    def paths(self, ex: Example) -> list[str]:
        return self.files[ex.key]


def all_examples() -> list[Example]:
    return [ex for exs in EXAMPLES.values() for ex in exs]


def write_shipped(model_path: str | None, out: Path = SHIPPED) -> dict:
    """Runs every example through the model at ``model_path`` into ``out``, with a manifest
    recording the model's fingerprint and each result's alignment verdict (the eval metric)."""
    from ediff_core.tools.eval.alignment import check_alignment
    from server.model import Model

    model = Model.load(model_path)
    try:
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        manifest: dict[str, Any] = {"model": model.name, "fingerprint": fingerprint(model.info()), "examples": {}}
        for ex in all_examples():
            names, verdicts = [], []
            for k, result in enumerate(run_example(model, ex)):
                name = f"{ex.key}_{k}.png"
                save_png(result.images[0], out / name, result.metadata[0])
                names.append(name)
                verdicts.append(check_alignment(result.images[0], ex.prompt).details)
            manifest["examples"][ex.key] = {"files": names, "alignment": verdicts}
            print(ex.key, verdicts, flush=True)
        (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        return manifest
    finally:
        model.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="write the demo's shipped example results (demo/assets/examples)")
    p.add_argument("--model", default=None, help="model folder (default: checkpoints/ediff-mini)")
    write_shipped(p.parse_args(argv).model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
