"""Per-sample U-Net time at U-Net batch 2 and 16 for the first base expert and the SR stage.

Usage: .venv/bin/python scripts/unet_per_sample.py [--model DIR]; run once with
EDIFF_MALLOC_TUNING=0 and once without, alternating, for the allocator A/B of docs/performance.md.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ediff_core.tools.bench import unet_ms  # noqa: E402
from ediff_core.pipeline import EDiffPipeline  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--model", default="checkpoints/ediff-mini")
ap.add_argument("--repeats", type=int, default=11)
args = ap.parse_args()
pipe = EDiffPipeline.from_pretrained(args.model)
for batch in (2, 16):
    ms = unet_ms(pipe, args.repeats, "a red circle above a blue square", batch=batch)
    print(f"batch {batch}:", {k: round(v / batch, 2) for k, v in ms.items()}, "ms per sample", flush=True)
