#!/usr/bin/env bash
# What this CPU workplace cannot do, as one prepared call on a lent GPU (device README: 15 minutes
# of device time per session, 10 per call). Here first: `bash scripts/gpu_wheels.sh`; then
#   run(command="bash scripts/gpu_session.sh", carry=[".whl"], timeout_s=590)
# Defaults fit one call: ~2 min of tests and benches, BASE_MIN 3 + EXPERT_MIN 1 (+ 0.5) of
# training, ~1 min of loading (about 8 of its 10 minutes). It writes to $OUT (at most 8 files come back):
#   gpu.log          the gpu-marked tests (CUDA training and resume across devices; the TensorRT
#                    engine test skips there: no TensorRT, docs/performance.md), nvidia-smi, rates
#   bench.tar        bench --json on CUDA, eager and torch.compile
#   shared.safetensors, E5_31.safetensors, complement_3_5.safetensors, E3_0.safetensors: fp16 U-Nets
#   meta.tar         their config.json / training.json, loss.csv files and the run's model_index.json
# The shipped shared model is trained on for BASE_MIN minutes at batch BATCH, then branched into the
# three experts, whose steps are set from the measured step rate to fit EXPERT_MIN minutes (the
# Fig. 7 baseline, which would take as long again, is cut by the time budget and not returned).
# Back here: `bash scripts/gpu_unpack.sh FILES_AT RUN` makes RUN a model folder (the shipped encoders
# and SR stage around the returned U-Nets); then `bash scripts/eval_mini.sh RUN runs/eval-gpu`.
# A dry run here: OUT=/tmp/o DEVICE=cpu BENCH=0 BASE_MIN=0.3 EXPERT_MIN=0.3 BATCH=8 WORKERS=1 PY=.venv/bin/python bash scripts/gpu_session.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:?set by the device tool}
DEVICE=${DEVICE:-cuda} BASE_MIN=${BASE_MIN:-3} EXPERT_MIN=${EXPERT_MIN:-1} BATCH=${BATCH:-256} WORKERS=${WORKERS:-14}
PY=${PY:-python3}
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error PYTHONUNBUFFERED=1
LOG=$OUT/gpu.log
{
  date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  $PY -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__)"
  timeout 120 $PY -m pytest -q -m gpu -p no:cacheprovider tests/test_training.py tests/test_accel.py 2>&1 | tail -15
} > "$LOG" 2>&1
if [ "${BENCH:-1}" = 1 ]; then
  B=/tmp/bench && mkdir -p $B
  timeout 90 $PY -m ediff_core bench --quick --json --device "$DEVICE" --compile none > $B/bench_eager.json 2>> "$LOG"
  timeout 90 $PY -m ediff_core bench --quick --json --device "$DEVICE" --compile torch > $B/bench_torch_compile.json 2>> "$LOG"
  tar -C $B -cf "$OUT/bench.tar" .
fi

R=/tmp/run && rm -rf $R && mkdir -p $R/base $R/sr64
cp -r checkpoints/ediff-mini/t5 checkpoints/ediff-mini/clip $R/
cp -r checkpoints/ediff-mini-train/base/shared $R/base/ && cp -r checkpoints/ediff-mini/sr64/single $R/sr64/
json() { $PY -c "import json, sys; print(json.load(open(sys.argv[1]))['step'])" "$1"; }
TRAIN=(--preset mini --out $R --resume --device "$DEVICE" --batch-size "$BATCH" --data-workers "$WORKERS" --dropout clip_text=0.5 --lr 1e-4)
START=$(json $R/base/shared/training.json)
$PY -m ediff_core train --stage base --base-steps 100000000 --minutes "$BASE_MIN" "${TRAIN[@]}" 2>&1 | tr '\r' '\n' | grep -v '%|'  >> "$LOG"
STEP=$(json $R/base/shared/training.json)
# the base job's steps per second, from its loss.csv (4th column: seconds since the job started)
RATE=$($PY -c "import csv, sys; r = list(csv.reader(open(sys.argv[1])))[1:]; print(round((len(r) - 1) / max(1e-9, float(r[-1][3]) - float(r[0][3])), 2))" $R/_train/base/shared/loss.csv)
EXPERT_STEPS=$($PY -c "import sys; print(max(1, int(float(sys.argv[1]) * 60 * float(sys.argv[2]) / 3)))" "$RATE" "$EXPERT_MIN")
echo "base: steps $START -> $STEP at batch $BATCH, $RATE steps/s; experts: $EXPERT_STEPS steps each" >> "$LOG"
# The three experts' steps fit EXPERT_MIN at that rate, the budget adds half a minute for their
# start-ups (data workers, encoders), and the Fig. 7 baseline after them is cut by it.
$PY -m ediff_core train --stage experts --base-steps "$STEP" --expert-steps "$EXPERT_STEPS" --minutes "$($PY -c "import sys; print(float(sys.argv[1]) * 1.15 + 0.5)" "$EXPERT_MIN")" \
  "${TRAIN[@]}" 2>&1 | tr '\r' '\n' | grep -v '%|'  >> "$LOG"
NETS=(shared E5_31 complement_3_5 E3_0)
for net in "${NETS[@]}"; do
  [ -f $R/base/$net/diffusion_pytorch_model.safetensors ] && cp $R/base/$net/diffusion_pytorch_model.safetensors "$OUT/$net.safetensors"
done
(cd $R && tar --exclude='*.safetensors' --exclude=state.json -cf "$OUT/meta.tar" model_index.json ${NETS[@]/#/base/} ${NETS[@]/#/_train/base/})
echo "done $(date -u)" >> "$LOG"
