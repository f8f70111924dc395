"""Samples/s of the training recipe itself: ``python -m ediff_core train`` as it runs (its data
worker, its logging, its EMA and saves), in configurations taken in turn (ABAB...), so a neighbour
on a shared CPU slows all alike (#26.2; ``train_throughput.py`` splits one step instead).

A configuration is PRECISION:WHERE, WHERE being where the frozen encoders run: ``main`` (before
the U-Net's step, as before 2026-12-07: ``--no-encode-in-workers``) or ``workers`` (in the data
worker, beside the step). ``fp32:main`` is the baseline every ratio is taken against, pair by pair.

Each run trains the ``mini`` base model from scratch for ``--minutes`` in a fresh folder (the
shipped encoders copied in); its rate is read from the run's ``loss.csv`` after ``--skip`` steps,
so start-up (loading, the data worker's first batch, kernel selection) is left out.

Usage: HF_HUB_OFFLINE=1 .venv/bin/python scripts/recipe_throughput.py [--rounds 2] [--minutes 1.5]
       [--configs fp32:main,bf16:main,fp32:workers,bf16:workers] [--json OUT]
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(config: str, minutes: float, threads: int, skip: int) -> float:
    """Steps per second of one ``train`` run after its first ``skip`` steps."""
    precision, where = config.split(":")
    with tempfile.TemporaryDirectory(prefix=f"recipe-{precision}-{where}-") as tmp:
        out = Path(tmp)
        for part in ("t5", "clip"):
            shutil.copytree(ROOT / "checkpoints" / "ediff-mini" / part, out / part)
        cmd = [sys.executable, "-m", "ediff_core", "train", "--preset", "mini", "--stage", "base", "--out", str(out), "--base-steps", "1000000",
               "--threads", str(threads), "--precision", precision, "--minutes", str(minutes),
               "--encode-in-workers" if where == "workers" else "--no-encode-in-workers"]
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with open(out / "_train" / "base" / "shared" / "loss.csv") as f:
            rows = [(int(r["step"]), float(r["seconds"])) for r in csv.DictReader(f)]
    (s0, t0), (s1, t1) = rows[skip - 1], rows[-1]
    if s1 - s0 < 10:
        raise RuntimeError(f"{config}: only {s1 - s0} steps after the first {skip}; give more --minutes")
    return (s1 - s0) / (t1 - t0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--minutes", type=float, default=1.5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip", type=int, default=10, help="first steps of each run left out of its rate")
    p.add_argument("--configs", default="fp32:main,bf16:main,fp32:workers,bf16:workers",
                   help="comma-separated PRECISION:WHERE (fp32|bf16 : main|workers); fp32:main is added as the baseline")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args()
    configs = ["fp32:main"] + [c for c in a.configs.split(",") if c != "fp32:main"]
    for c in configs:
        if c.count(":") != 1 or c.split(":")[0] not in ("fp32", "bf16") or c.split(":")[1] not in ("main", "workers"):
            p.error(f"--configs: each entry is PRECISION:WHERE with fp32|bf16 and main|workers; got {c!r}")
    rates: dict[str, list[float]] = {c: [] for c in configs}
    for k in range(a.rounds):
        for c in configs:
            rates[c].append(run(c, a.minutes, a.threads, a.skip))
            print(f"round {k + 1}: {c} {rates[c][-1]:.3f} steps/s", flush=True)
    batch = 32  # the mini preset's batch
    ratios = {c: [round(r / f, 3) for f, r in zip(rates["fp32:main"], rates[c])] for c in configs[1:]}
    report = {"date": time.strftime("%Y-%m-%d"), "minutes": a.minutes, "threads": a.threads, "rounds": a.rounds,
              "steps_per_s": {c: [round(r, 3) for r in v] for c, v in rates.items()},
              "samples_per_s": {c: round(batch * statistics.median(v), 1) for c, v in rates.items()},
              "ratios_vs_fp32_main": ratios, "median_vs_fp32_main": {c: round(statistics.median(v), 3) for c, v in ratios.items()}}
    print(json.dumps(report))
    if a.json:
        a.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
