"""Samples/s of the shipped training recipe itself, fp32 against bf16: ``python -m ediff_core train``
as it runs (its data worker, its logging, its EMA and saves), the two precisions in turn (ABAB), so
a neighbour on a shared CPU slows both alike (#26.2; ``train_throughput.py`` splits one step instead).

Each run trains the ``mini`` base model from scratch for ``--minutes`` in a fresh folder (the
shipped encoders copied in); its rate is read from the run's ``loss.csv`` after ``--skip`` steps,
so start-up (loading, the data worker's first batch, kernel selection) is left out.

Usage: HF_HUB_OFFLINE=1 .venv/bin/python scripts/recipe_throughput.py [--rounds 2] [--minutes 1.5] [--json OUT]
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


def run(precision: str, minutes: float, threads: int, skip: int) -> float:
    """Steps per second of one ``train`` run after its first ``skip`` steps."""
    with tempfile.TemporaryDirectory(prefix=f"recipe-{precision}-") as tmp:
        out = Path(tmp)
        for part in ("t5", "clip"):
            shutil.copytree(ROOT / "checkpoints" / "ediff-mini" / part, out / part)
        cmd = [sys.executable, "-m", "ediff_core", "train", "--preset", "mini", "--stage", "base", "--out", str(out), "--base-steps", "1000000",
               "--threads", str(threads), "--precision", precision, "--minutes", str(minutes)]
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with open(out / "_train" / "base" / "shared" / "loss.csv") as f:
            rows = [(int(r["step"]), float(r["seconds"])) for r in csv.DictReader(f)]
    (s0, t0), (s1, t1) = rows[skip - 1], rows[-1]
    if s1 - s0 < 10:
        raise RuntimeError(f"{precision}: only {s1 - s0} steps after the first {skip}; give more --minutes")
    return (s1 - s0) / (t1 - t0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--minutes", type=float, default=1.5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip", type=int, default=10, help="first steps of each run left out of its rate")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args()
    rates: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for k in range(a.rounds):
        for precision in rates:
            rates[precision].append(run(precision, a.minutes, a.threads, a.skip))
            print(f"round {k + 1}: {precision} {rates[precision][-1]:.3f} steps/s", flush=True)
    batch = 32  # the mini preset's batch
    report = {"date": time.strftime("%Y-%m-%d"), "minutes": a.minutes, "threads": a.threads, "rounds": a.rounds,
              "samples_per_s": {k: round(batch * statistics.median(v), 1) for k, v in rates.items()},
              "ratios": [round(b / f, 3) for f, b in zip(rates["fp32"], rates["bf16"])]}
    report["bf16_vs_fp32"] = round(statistics.median(report["ratios"]), 3)
    print(json.dumps(report))
    if a.json:
        a.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
