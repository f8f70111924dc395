#!/usr/bin/env bash
# A 1,000-image toy run on your own-data path, timed: export-data, embed, and the mini preset's
# base model for STEPS steps (batch 32) once from the embedding cache and once encoding on the fly.
#   bash scripts/toy_run.sh [OUT=runs/toy] [STEPS=100]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/toy}
STEPS=${2:-100}
PY=".venv/bin/python"
export HF_HUB_OFFLINE=1
rm -rf "$OUT"
mkdir -p "$OUT"
ENC=(--t5 checkpoints/ediff-mini/t5 --clip checkpoints/ediff-mini/clip)
t() { local s=$(date +%s.%N); "$@"; echo "$(echo "$(date +%s.%N) - $s" | bc) s: ${*:0:6}" >> "$OUT/timings.txt"; }
t $PY -m ediff_core export-data --out "$OUT/data" --n 1000
t $PY -m ediff_core embed --data "$OUT/data" --out "$OUT/cache" "${ENC[@]}" --device cpu
for mode in cache fly; do
  extra=(); [ "$mode" = cache ] && extra=(--embeddings "$OUT/cache")
  t $PY -m ediff_core train --preset mini --stage base --out "$OUT/$mode" --data "$OUT/data" "${ENC[@]}" "${extra[@]}" \
    --base-steps "$STEPS" --device cpu --save-every "$STEPS" 2>&1 | grep -v "it/s" | tail -2
done
$PY - "$OUT" <<'PY'
import csv, statistics, sys
out = sys.argv[1]
for mode in ("cache", "fly"):
    s = [float(r["seconds"]) for r in csv.DictReader(open(f"{out}/{mode}/_train/base/shared/loss.csv"))]
    d = [b - a for a, b in zip(s, s[1:])][5:]
    print(f"{mode}: median step {statistics.median(d):.3f} s, mean {statistics.mean(d):.3f} s over {len(d)} steps")
PY
cat "$OUT/timings.txt"
