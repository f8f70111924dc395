"""Held-out EDM denoising loss of base networks on the same scenes, σ and noise: a probe's figure that
moves long before alignment does (#26.3).

Every network sees the same fresh Shapes World batches (a data seed no training run uses), the
same σ grid (quantiles of the training lognormal, ln σ ~ N(−1.2, 1.2²), §3) and the same noise;
it reports the λ(σ)-weighted loss per σ and its mean over the grid, with the batches' spread.
No dropout: every embedding is kept.

Usage: HF_HUB_OFFLINE=1 .venv/bin/python scripts/val_loss.py ENCODERS_DIR NET_DIR [NET_DIR ...] [--batches 8] [--json OUT]
  e.g. scripts/val_loss.py checkpoints/ediff-mini checkpoints/ediff-mini-train/base/shared runs/mini/base/shared
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ediff_core.core.loss import P_MEAN, P_STD, loss_weight  # noqa: E402
from ediff_core.core.networks import EDiffUNet, denoiser  # noqa: E402
from ediff_core.tools.training import PRESETS, batches, load_training_encoders  # noqa: E402

DATA_SEED = 987_654_321  # training draws step seeds from cfg.seed * 100003 + step, far below this
QUANTILES = (0.05, 0.2, 0.35, 0.5, 0.65, 0.8, 0.95)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("encoders", type=Path, help="a folder with the t5/ and clip/ the networks were trained with")
    p.add_argument("nets", type=Path, nargs="+", help="exported base U-Net folders (config.json + safetensors)")
    p.add_argument("--batches", type=int, default=8, help="batches of 32 fresh scenes")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    cfg = replace(PRESETS["mini"], data_workers=0)
    enc = load_training_encoders(a.encoders)
    normal = torch.distributions.Normal(0.0, 1.0)
    sigmas = [math.exp(P_MEAN + P_STD * float(normal.icdf(torch.tensor(q)))) for q in QUANTILES]
    data = iter(batches(cfg, DATA_SEED))
    fixed = []
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for _ in range(a.batches):
            b = next(data)
            cond = enc.encode(list(b["caption"]), (b["image"] + 1) / 2)
            noise = torch.randn(b["base"].shape, generator=gen)
            fixed.append((b["base"], cond, noise))
    report = {"sigmas": [round(s, 4) for s in sigmas], "batches": a.batches, "batch_size": cfg.batch_size, "nets": {}}
    for folder in a.nets:
        D = denoiser(EDiffUNet.from_pretrained(folder, low_cpu_mem_usage=False).float().eval())
        per_sigma, per_batch = [], []
        with torch.inference_mode():
            for s in sigmas:
                losses = []
                for x0, cond, noise in fixed:
                    sig = torch.full((x0.shape[0],), s)
                    out = D(x0 + s * noise, sig, cond)
                    losses.append(float((loss_weight(sig) * ((out - x0) ** 2).flatten(1).mean(1)).mean()))
                per_sigma.append(statistics.fmean(losses))
                per_batch.append(losses)
        means = [statistics.fmean(col) for col in zip(*per_batch)]  # each batch's mean over the σ grid
        report["nets"][str(folder)] = {
            "mean": round(statistics.fmean(per_sigma), 5),
            "spread": round(statistics.stdev(means) / math.sqrt(len(means)), 5) if len(means) > 1 else None,
            "per_sigma": [round(v, 5) for v in per_sigma],
        }
        print(f"{folder}: mean {report['nets'][str(folder)]['mean']} ± {report['nets'][str(folder)]['spread']}; per σ {report['nets'][str(folder)]['per_sigma']}", flush=True)
    if a.json:
        a.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
