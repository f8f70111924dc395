"""Alignment of one base network alone (e.g. the shared model at a checkpoint), through the shipped SR stage.

Usage: .venv/bin/python scripts/align_network.py FOLDER [FOLDER ...] [--name shared] [--n 16]
Each FOLDER holds ``base/<name>`` (a training run, or checkpoints/ediff-mini-train). Prints, per
folder, the aligned share of single-object and multi-object test prompts (``eval --suite alignment``).
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ediff_core.tools.eval.paper import load_variant  # noqa: E402
from ediff_core.tools.eval.alignment import alignment_suite  # noqa: E402
from ediff_core.pipeline import EDiffPipeline  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("folders", nargs="+")
ap.add_argument("--name", default="shared")
ap.add_argument("--n", type=int, default=16)
ap.add_argument("--model", default="checkpoints/ediff-mini", help="encoders and SR stage come from here")
args = ap.parse_args()
torch.set_num_threads(1)
pipe = EDiffPipeline.from_pretrained(args.model)
for folder in args.folders:
    single = EDiffPipeline(pipe.encoders, load_variant(pipe, folder, args.name), pipe.sr, pipe.name, pipe.defaults, pipe.device)
    report = alignment_suite(single, n=args.n, kinds=("single", "multi"))
    print(folder, {k: f"{round(v['aligned'] * v['n'])}/{v['n']}" for k, v in report["kinds"].items()}, f"{report['seconds']} s", flush=True)
