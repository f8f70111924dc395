#!/usr/bin/env bash
# Turns what scripts/gpu_session.sh returned (the device tool's files_at folder) into a model folder:
# the shipped encoders and SR stage around the returned fp16 U-Nets, indexed as the run indexed them.
# Usage: bash scripts/gpu_unpack.sh FILES_AT RUN_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=${1:?the folder holding the files of the device call} RUN=${2:?the model folder to write}
mkdir -p "$RUN/sr64"
cp -r checkpoints/ediff-mini/t5 checkpoints/ediff-mini/clip "$RUN/"
cp -r checkpoints/ediff-mini/sr64/single "$RUN/sr64/"
tar -C "$RUN" -xf "$SRC/meta.tar"
for net in shared E5_31 complement_3_5 E3_0; do
  [ -f "$SRC/$net.safetensors" ] && cp "$SRC/$net.safetensors" "$RUN/base/$net/diffusion_pytorch_model.safetensors"
done
for f in "$RUN"/base/*/training.json; do  # the shared model's step counts from the start; an expert's, its own
  echo "$(basename "$(dirname "$f")"): $(grep -o '"step": [0-9]*' "$f")"
done
