"""Does the model know *which shape* a prompt asks for? (the model card's "What would close the gap")

1. Encoders: mean cosine similarity of the conditioning of prompts "a {colour} {shape}" that differ
   only in the shape versus only in the colour (6 × 6 prompts), for the pooled CLIP text vector,
   the CLIP token sequence and the T5 token sequence. An encoder blind to shapes scores ~1 on the first.
2. Base model: for every shape, small and large, four colours, one seed each, the share of 32-px base
   images (upsampled to 64) that ``check_alignment`` accepts, the shapes the detector found, and how
   many images are empty; once per encoder mode given.

Usage: .venv/bin/python scripts/shape_binding.py [--model DIR] [--encoders both t5 clip]
"""

import argparse
import collections
import itertools
import sys
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ediff_core.data.shapes_world import COLORS, SHAPES  # noqa: E402
from ediff_core.tools.eval.alignment import check_alignment, detect_objects, parse_prompt  # noqa: E402
from ediff_core.pipeline import EDiffPipeline  # noqa: E402
from ediff_core.core.request import GenerationRequest  # noqa: E402


def encoder_similarity(pipe: EDiffPipeline, colours: list[str], shapes: list[str]) -> dict[str, tuple[float, float]]:
    """{embedding: (cos when only the shape differs, cos when only the colour differs)}."""
    prompts = [(c, s) for c in colours for s in shapes]
    with torch.inference_mode():
        cond = pipe.encoders.encode([f"a {c} {s}" for c, s in prompts], None, pipe.device)
    feats = {
        "CLIP pooled": cond.clip_pooled,
        "CLIP tokens": cond.clip_tokens * cond.clip_mask[..., None],
        "T5 tokens": cond.t5_tokens * cond.t5_mask[..., None],
    }
    out = {}
    for name, f in feats.items():
        f = torch.nn.functional.normalize(f.flatten(1).float(), dim=1)
        sim = f @ f.T
        shape_only = [sim[i, j] for i, j in itertools.combinations(range(len(prompts)), 2) if prompts[i][0] == prompts[j][0]]
        colour_only = [sim[i, j] for i, j in itertools.combinations(range(len(prompts)), 2) if prompts[i][1] == prompts[j][1]]
        out[name] = (float(torch.stack(shape_only).mean()), float(torch.stack(colour_only).mean()))
    return out


def shape_accuracy(pipe: EDiffPipeline, encoders: str, colours: list[str]) -> tuple[dict[str, int], collections.Counter, int, int]:
    """Aligned images per shape, (asked, found) shape counts, empty images, images in all."""
    aligned: dict[str, int] = collections.Counter()
    found: collections.Counter = collections.Counter()
    empty = total = 0
    for shape in SHAPES:
        for k, colour in enumerate(colours):
            for size in ("small", "large"):
                prompt = f"a {size} {colour} {shape}"
                image = pipe(GenerationRequest(prompt, seed=k, encoders=encoders)).images[0].resize((64, 64), Image.BICUBIC)
                dets = detect_objects(image)
                empty += not dets
                total += 1
                aligned[shape] += check_alignment(image, parse_prompt(prompt)).aligned
                found.update((shape, d.shape) for d in dets)
    return aligned, found, empty, total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="checkpoints/ediff-mini")
    ap.add_argument("--encoders", nargs="+", default=["both"], choices=["both", "t5", "clip"])
    args = ap.parse_args()
    pipe = EDiffPipeline.from_pretrained(args.model)
    for name, (shape_cos, colour_cos) in encoder_similarity(pipe, list(COLORS)[:6], list(SHAPES)).items():
        print(f"{name}: cos {shape_cos:.3f} when only the shape differs, {colour_cos:.3f} when only the colour differs")
    pipe.sr = []  # the base stage decides the shape; SR only sharpens it
    colours = ["red", "blue", "green", "orange"]
    for mode in args.encoders:
        aligned, found, empty, total = shape_accuracy(pipe, mode, colours)
        right = sum(n for (asked, got), n in found.items() if asked == got)
        print(f"encoders={mode}: aligned {sum(aligned.values())}/{total}, empty {empty}/{total}, "
              f"detected objects of the asked shape {right}/{sum(found.values())}; per shape (of {total // len(SHAPES)}): {dict(aligned)}", flush=True)


if __name__ == "__main__":
    main()
