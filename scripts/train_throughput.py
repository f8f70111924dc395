"""Training throughput on this machine: samples/s of one base-model training step, fp32 against
bf16 autocast, for the ``mini`` U-Net and one twice as wide, and where a step's time goes.

Issue #26.2: a step is the data (Shapes World scenes), the encoders (mini-T5 and mini-CLIP on the
batch's captions and images), the U-Net forward with the EDM loss, the backward, and the
optimizer with the EMA. Each phase runs inside a ``torch.profiler.record_function`` label and
the split is read from the profiler's averages of those labels. Configurations run round-robin,
so a neighbour on a shared CPU slows all of them alike.

Usage: HF_HUB_OFFLINE=1 .venv/bin/python scripts/train_throughput.py [--steps 6] [--json OUT]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ediff_core.tools.feed import Feed  # noqa: E402
from ediff_core.core.loss import EDMLoss  # noqa: E402
from ediff_core.core.networks import build_unet, denoiser  # noqa: E402
from ediff_core.tools.precision import precision_context  # noqa: E402
from ediff_core.tools.training import PRESETS, batches, ema_step, load_training_encoders  # noqa: E402

PHASES = ("data", "encoders", "forward", "backward", "optimizer")


class Arm:
    """One configuration's network, optimizer, EMA and data, stepped one step at a time."""

    def __init__(self, unet: str, precision: str, enc, cfg):
        self.name, self.precision, self.enc = f"{unet} {precision}", precision, enc
        self.cfg = replace(cfg, precision=precision)
        self.net = build_unet("mini_wide" if unet == "wide" else unet, cfg.base_resolution, enc.dims, False).float().train()
        self.params = sum(p.numel() for p in self.net.parameters())
        self.ema = copy.deepcopy(self.net).eval().requires_grad_(False)
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.D, self.loss_fn, self.feed = denoiser(self.net), EDMLoss(), Feed()
        self.gen = torch.Generator().manual_seed(0)
        self.data = iter(batches(self.cfg, 0))
        self.seconds: list[float] = []

    def step(self) -> None:
        t0 = time.perf_counter()
        with record_function(f"{self.name}/data"):
            batch = next(self.data)
        with record_function(f"{self.name}/encoders"), torch.no_grad():
            cond = self.feed.conditioning(self.enc, batch, self.cfg, self.gen)
        with record_function(f"{self.name}/forward"), precision_context(self.precision, "cpu"):
            loss = self.loss_fn(self.D, batch["base"], cond, self.gen).mean()
        with record_function(f"{self.name}/backward"):
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
        with record_function(f"{self.name}/optimizer"):
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), 1.0)
            self.opt.step()
            ema_step(self.ema, self.net, self.cfg.ema_decay)
        self.seconds.append(time.perf_counter() - t0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=6, help="timed steps per configuration (after 2 warm-up steps)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    cfg = replace(PRESETS["mini"], data_workers=0)
    enc = load_training_encoders(Path(__file__).resolve().parents[1] / "checkpoints" / "ediff-mini")
    arms = [Arm(u, prec, enc, cfg) for u in ("mini", "wide") for prec in ("fp32", "bf16")]
    for _ in range(2):  # warm-up: allocator, oneDNN kernels for each shape
        for arm in arms:
            arm.step()
    for arm in arms:
        arm.seconds.clear()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(a.steps):
            for arm in arms:
                arm.step()
    totals = {e.key: e.cpu_time_total / 1e6 for e in prof.key_averages() if "/" in e.key}
    rows = []
    for arm in arms:
        s = sorted(arm.seconds)[len(arm.seconds) // 2]
        split = {ph: totals.get(f"{arm.name}/{ph}", 0.0) / a.steps for ph in PHASES}
        rows.append({"config": arm.name, "parameters_M": round(arm.params / 1e6, 2), "median_step_s": round(s, 3), "samples_per_s": round(cfg.batch_size / s, 1),
                     "split_s": {k: round(v, 3) for k, v in split.items()}})
    base = {r["config"]: r["samples_per_s"] for r in rows}
    print(f"batch {cfg.batch_size}, {a.steps} steps each, {a.threads} threads, {time.strftime('%Y-%m-%d')}")
    print("| config | params (M) | step (s, median) | samples/s | vs mini fp32 | " + " | ".join(PHASES) + " |")
    print("|---|---|---|---|---|" + "---|" * len(PHASES))
    for r in rows:
        share = " | ".join(f"{r['split_s'][ph]:.3f}" for ph in PHASES)
        print(f"| {r['config']} | {r['parameters_M']} | {r['median_step_s']} | {r['samples_per_s']} | {r['samples_per_s'] / base['mini fp32']:.2f}x | {share} |")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
