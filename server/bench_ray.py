"""Throughput of ``python -m server.ray_serve`` with 1 and with 2 replicas, over real HTTP.

``python -m server.bench_ray --replicas 1 2 --clients 8 --requests 16 --steps 10 --sr-steps 4``
starts the Ray Serve app for each replica count (a local cluster on a free loopback port), sends
``--requests`` requests from ``--clients`` concurrent HTTP clients and prints JSON: requests/s and
how many requests each replica served. Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from .bench_throughput import PROMPTS
from .testing import ROOT, free_port, wait_healthy


def run_once(replicas: int, args: argparse.Namespace) -> dict:
    """Starts the app with ``replicas`` replicas, drives it, stops it; the figures."""
    port = free_port()
    log = Path(tempfile.mkstemp(prefix="ediff-bench-ray-", suffix=".log")[1])
    cmd = [sys.executable, "-m", "server.ray_serve", "--replicas", str(replicas), "--port", str(port), "--num-cpus-per-replica", str(args.cpus_per_replica)]
    if args.model:
        cmd += ["--model", args.model]
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, 300, proc, log)
        while httpx.get(f"{url}/health", timeout=30).json()["replicas"]["running"] != replicas:
            time.sleep(1)

        def one(k: int) -> str:
            body = {"prompt": PROMPTS[k % len(PROMPTS)], "seed": k, "steps": args.steps, "sr_steps": args.sr_steps}
            r = httpx.post(f"{url}/v1/generate", json=body, timeout=600)
            r.raise_for_status()
            return r.headers["x-replica"]

        one(0)  # warm-up
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            served = Counter(pool.map(one, range(args.requests)))
        seconds = time.perf_counter() - t0
        return {"replicas": replicas, "clients": args.clients, "requests": args.requests, "seconds": round(seconds, 2),
                "requests_per_s": round(args.requests / seconds, 3), "per_replica": sorted(served.values(), reverse=True)}
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None)
    p.add_argument("--replicas", type=int, nargs="+", default=[1, 2])
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=16)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--sr-steps", type=int, default=4)
    p.add_argument("--cpus-per-replica", type=float, default=1.0, help="each replica's num_cpus and torch threads")
    args = p.parse_args(argv)
    runs = [run_once(n, args) for n in args.replicas]
    base = runs[0]["requests_per_s"]
    for r in runs:
        r["vs_first"] = round(r["requests_per_s"] / base, 2)
    print(json.dumps({"runs": runs, "steps": args.steps, "sr_steps": args.sr_steps, "model": args.model or "checkpoints/ediff-mini"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
