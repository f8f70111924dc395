#!/usr/bin/env bash
# Copies a finished ediff-mini training run (fp16 exports) into the shipped folders:
#   checkpoints/ediff-mini        the default model (encoders, three experts, SR, index, card figures)
#   checkpoints/ediff-mini-train  the shared model the experts branched from, and the Fig. 7 baseline
# Usage: bash scripts/ship_mini.sh [RUN_DIR]   (default runs/ediff-mini, as written by
#   python -m ediff_core train --preset mini --stage all --out runs/ediff-mini --resume)
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/ediff-mini}
DST=checkpoints/ediff-mini
TRAIN=checkpoints/ediff-mini-train
for part in t5 clip base/E5_31 base/complement_3_5 base/E3_0 sr64/single base/shared base/baseline; do
  [ -d "$RUN/$part" ] || { echo "ship_mini: $RUN/$part is missing; finish that training stage first" >&2; exit 1; }
done
for part in t5 clip base/E5_31 base/complement_3_5 base/E3_0 sr64/single; do
  rm -rf "${DST:?}/$part"; mkdir -p "$(dirname "$DST/$part")"; cp -r "$RUN/$part" "$DST/$part"
done
cp "$RUN/model_index.json" "$DST/model_index.json"
[ -f "$RUN/loss_curves.png" ] && cp "$RUN/loss_curves.png" "$DST/loss_curves.png"
for part in base/shared base/baseline; do
  rm -rf "${TRAIN:?}/$part"; mkdir -p "$TRAIN/base"; cp -r "$RUN/$part" "$TRAIN/$part"
done
du -sh "$DST" "$TRAIN"
