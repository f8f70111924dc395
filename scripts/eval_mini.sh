#!/usr/bin/env bash
# Measures a model folder with every figure its model card states; writes one JSON per suite.
#   alignment.json  eval --suite alignment --n 16   (SHAPES_WORLD.md "What aligned means")
#   paint.json      eval --suite paint --n 16       (paint-with-words placement, with and without)
#   style.json      eval --suite style --n 10       (style transfer, background classified)
#   bench.json      bench --json                     (speed; run on an otherwise idle machine)
# Usage: bash scripts/eval_mini.sh [MODEL_DIR] [OUT_DIR]   (defaults: checkpoints/ediff-mini docs/eval)
# The paper-findings suite is separate (minutes): python -m ediff_core eval --suite paper --out docs/results
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-checkpoints/ediff-mini}
OUT=${2:-docs/eval}
PY=${PY:-.venv/bin/python}
export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
mkdir -p "$OUT"
"$PY" -m ediff_core eval --model "$MODEL" --suite alignment --n 16 > "$OUT/alignment.json"
"$PY" -m ediff_core eval --model "$MODEL" --suite paint --n 16 > "$OUT/paint.json"
"$PY" -m ediff_core eval --model "$MODEL" --suite style --n 10 > "$OUT/style.json"
"$PY" -m ediff_core bench --model "$MODEL" --json > "$OUT/bench.json"
"$PY" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
a = json.loads((out / "alignment.json").read_text())
print("alignment:", {k: f"{v['aligned'] * v['n']:.0f}/{v['n']}" for k, v in a["kinds"].items()})
p = json.loads((out / "paint.json").read_text())
print("paint placement:", {k: p[k] for k in ("with_pww", "without_pww")})
s = json.loads((out / "style.json").read_text())
print("style:", {k: v for k, v in s.items() if k != "target"})
b = json.loads((out / "bench.json").read_text())
print("bench:", {k: b.get(k) for k in ("latency_s", "sampler_overhead", "ensemble_vs_single", "batch_speedup", "images_per_s")})
EOF
