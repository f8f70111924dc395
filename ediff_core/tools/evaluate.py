"""``python -m ediff_core eval``: alignment on held-out Shapes World prompts (and further suites).

Alignment follows SHAPES_WORLD.md "What aligned means": objects found by palette colour, shape
classified, counts, cells and relations checked (``ediff_core.tools.eval.alignment``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .eval.alignment import alignment_suite
from ..pipeline import EDiffPipeline
from ..core.request import GenerationRequest

SUITES = ("alignment", "paint", "style", "paper")


def main(args: argparse.Namespace) -> int:
    from ..core.request import pick_device

    if args.suite not in SUITES:
        raise ValueError(f"suite must be one of {', '.join(SUITES)}; got {args.suite!r}")
    # Sampling settings of the alignment, paint and style suites; None keeps the model's defaults (model_index.json).
    request = {k: v for k, v in {"steps": args.steps, "guidance": args.guidance, "encoders": args.encoders}.items() if v is not None}
    strength = 1.0 if args.style_strength is None else args.style_strength
    pww_weight = 1.0 if args.pww_weight is None else args.pww_weight
    base = GenerationRequest("x", style_strength=strength, pww_weight=pww_weight, **request).validate()  # a RequestError names the bad flag, before the model loads
    pipe = EDiffPipeline.from_pretrained(args.model, device=pick_device(args.device))
    n = args.n or (2 if args.quick else 16)
    if args.suite == "alignment":
        report = alignment_suite(pipe, n=n, base=base, out=Path(args.out) / "images" if args.out else None)
    elif args.suite == "paint":
        from .eval.control import PAINT_TARGET, paint_placement_rate

        report = {w: vars(paint_placement_rate(pipe, n, seed=0, with_pww=w, pww_weight=pww_weight, out=Path(args.out) / "images" if args.out else None, **request)) for w in (False, True)}
        report = {"with_pww": report[True], "without_pww": report[False], "target": PAINT_TARGET, "settings": {**request, "pww_weight": pww_weight}}
    elif args.suite == "style":
        from ..data.shapes_world import STYLES
        from .eval.control import STYLE_TARGETS, style_rate

        report = {s: vars(style_rate(pipe, s, n, seed=0, strength=strength, **request)) for s in STYLES}
        report["target"] = STYLE_TARGETS
        report["settings"] = {**request, "style_strength": strength}
    elif args.suite == "paper":
        from .eval.paper_suite import run_paper_suite
        from ..core.model_folder import default_model_path

        out = Path(args.out or "docs/results")
        report = run_paper_suite(pipe, out, quick=args.quick, n=args.n, model_folder=args.model or default_model_path())
        print(json.dumps(report, indent=1, default=str))
        return 0
    text = json.dumps(report, indent=1, default=str)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / f"{args.suite}.json").write_text(text)
    print(text)
    return 0
