"""Throughput of the step-level batching scheduler: N concurrent clients vs one at a time.

``python -m server.bench_throughput --model PATH --clients 1 4 8 --requests 8 --steps 10``
prints JSON: for each client count, requests/s and seconds per image through ``Model`` (the
in-process scheduler), against the same requests run one at a time straight through the
pipeline; plus the scheduler's batching counters. Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import threading
import time

from ediff_core.tools.accel import tune_cpu_allocator
from ediff_core.pipeline import EDiffPipeline
from ediff_core.core.request import GenerationRequest

from .model import Model, pick_device

PROMPTS = ["a red circle and two blue stars on old paper", "two green hearts at night", "a large yellow triangle above a small purple diamond", "three pink squares in comic style"]


def _requests(n: int, steps: int, sr_steps: int) -> list[GenerationRequest]:
    return [GenerationRequest(PROMPTS[k % len(PROMPTS)], seed=k, steps=steps, sr_steps=sr_steps) for k in range(n)]


def sequential(pipe: EDiffPipeline, reqs: list[GenerationRequest]) -> float:
    """Seconds to run ``reqs`` one after another without the scheduler."""
    t0 = time.perf_counter()
    for r in reqs:
        pipe(r)
    return time.perf_counter() - t0


def concurrent(model: Model, reqs: list[GenerationRequest], clients: int) -> float:
    """Seconds for ``clients`` threads to drain ``reqs`` through the scheduler."""
    todo = list(reqs)
    lock = threading.Lock()

    def client() -> None:
        while True:
            with lock:
                if not todo:
                    return
                r = todo.pop()
            model(r)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model folder (default: checkpoints/ediff-mini)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8])
    p.add_argument("--requests", type=int, default=8, help="requests per measurement")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--sr-steps", type=int, default=4)
    args = p.parse_args(argv)
    tune_cpu_allocator()  # as app.py does: the served process's allocator
    pipe = EDiffPipeline.from_pretrained(args.model, device=pick_device(args.device))
    model = Model(pipe, max_queue=max(args.clients) + 1, max_running=max(args.clients))
    reqs = _requests(args.requests, args.steps, args.sr_steps)
    for r in reqs[:2]:  # warm-up: first calls of each batch shape are slow on CPU
        pipe(r)
        model(r)
    concurrent(model, reqs[:4], 4)
    base = sequential(pipe, reqs)
    out = {"model": pipe.name, "device": str(pipe.device), "requests": len(reqs), "steps": args.steps, "sr_steps": args.sr_steps,
           "one_at_a_time": {"seconds": round(base, 3), "requests_per_s": round(len(reqs) / base, 3)}, "clients": {}}
    for n in args.clients:
        before = model.scheduler.stats.as_dict()
        secs = concurrent(model, reqs, n)
        after = model.scheduler.stats.as_dict()
        calls, evals = after["calls"] - before["calls"], after["evaluations"] - before["evaluations"]
        out["clients"][str(n)] = {
            "seconds": round(secs, 3),
            "requests_per_s": round(len(reqs) / secs, 3),
            "speedup_vs_one_at_a_time": round(base / secs, 3),
            "evaluations_per_call": round(evals / max(calls, 1), 3),
        }
    out["max_batch_requests"] = model.scheduler.stats.max_batch_requests
    model.close()
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
