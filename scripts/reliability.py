"""The full reliability suite of the model server (issue #24.6), as a user of the server tests it.

Every part starts its own ``python app.py`` on 127.0.0.1 (the tiny random model, or --model), is
bounded in count and time, and stops by itself:

  schemathesis  the OpenAPI description fuzzed: no 5xx, no response outside the schema
  load          32 clients for a fixed time: p50/p95 latency, throughput, lost and wrong results
                (each image compared with the same request run alone: within 2/255, docs/serving.md)
  kill -9       a UI load through gradio_client, the server killed mid-run and started again:
                seconds until /health answers, and every PNG in the outputs folder decodes
  memory        the server's RSS over 1,000 small requests
  fairness      one client floods long requests; another's ordinary generate against its solo latency
  caps          a 200-phrase paint request refused, and how fast

Clients are told apart by X-Forwarded-For (the app is told to trust it), with the shipped
per-client defaults. Prints a markdown table and writes the figures as JSON.

Usage: HF_HUB_OFFLINE=1 .venv/bin/python scripts/reliability.py [--json OUT] [--model DIR] [--load-s 30]
       [--only load,fairness]      (about 5 min on a 2-core CPU with the tiny model)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from live_server import start_app  # noqa: E402  (the tests' real-server helpers)

PROMPT = "a red circle and two blue stars on old paper"
SMALL = {"prompt": PROMPT, "steps": 4, "sr_steps": 2}
PARTS = ("schemathesis", "load", "kill", "memory", "fairness", "caps")


def ip(k: int) -> dict[str, str]:
    return {"X-Forwarded-For": f"10.9.{k // 250}.{k % 250 + 1}"}


def pixels(item: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(item["png_base64"]))).convert("RGB"), np.int16)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))] if s else float("nan")


# ---------------------------------------------------------------- the parts


def run_schemathesis(url: str, examples: int) -> dict:
    t0 = time.monotonic()
    cmd = [str(Path(sys.executable).with_name("schemathesis")), "run", f"{url}/openapi.json", "-n", str(examples),
           "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
           "--request-timeout", "120", "-H", "X-Forwarded-For: 10.8.0.1", "--max-failures", "20"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    tail = p.stdout[-3000:]
    return {"exit_code": p.returncode, "seconds": round(time.monotonic() - t0, 1), "passed": p.returncode == 0, "summary": tail.strip().splitlines()[-12:]}


async def _client_loop(k: int, url: str, until: float, seeds: list[int], refs: dict[int, np.ndarray], out: dict) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=300, headers=ip(100 + k)) as c:
        n = 0
        while time.monotonic() < until:
            seed = seeds[(k + n) % len(seeds)]
            n += 1
            t0 = time.monotonic()
            try:
                r = await c.post("/v1/generate", json={**SMALL, "seed": seed})
            except httpx.HTTPError as e:
                out["lost"].append(f"{type(e).__name__}: {e}")
                continue
            dt = time.monotonic() - t0
            if r.status_code != 200:
                out["errors"].append(r.status_code)
                continue
            out["latency"].append(dt)
            diff = int(np.abs(pixels(r.json()["images"][0]) - refs[seed]).max())
            out["max_diff"] = max(out["max_diff"], diff)
            if diff > 2:
                out["wrong"] += 1


def run_load(url: str, clients: int, seconds: float) -> dict:
    seeds = list(range(8))
    with httpx.Client(base_url=url, timeout=120, headers=ip(99)) as c:  # the solo references
        refs = {s: pixels(c.post("/v1/generate", json={**SMALL, "seed": s}).json()["images"][0]) for s in seeds}
    out = {"latency": [], "errors": [], "lost": [], "wrong": 0, "max_diff": 0}
    t0 = time.monotonic()

    async def main() -> None:
        until = time.monotonic() + seconds
        await asyncio.gather(*[_client_loop(k, url, until, seeds, refs, out) for k in range(clients)])

    asyncio.run(main())
    wall = time.monotonic() - t0
    lat = out["latency"]
    return {"clients": clients, "seconds": round(wall, 1), "requests": len(lat), "throughput_rps": round(len(lat) / wall, 2),
            "p50_s": round(percentile(lat, 0.5), 3), "p95_s": round(percentile(lat, 0.95), 3), "non_200": len(out["errors"]),
            "statuses": sorted(set(out["errors"])), "lost": len(out["lost"]), "wrong": out["wrong"], "max_pixel_diff": out["max_diff"]}


def run_kill(args: list[str], outputs: Path) -> dict:
    """gradio_client jobs (which write PNGs to --outputs), kill -9 mid-run, start again."""
    from gradio_client import Client

    app = start_app([*args, "--outputs", str(outputs)])
    stop = threading.Event()
    done = [0]

    def ui_load(k: int) -> None:
        try:
            client = Client(app.url, verbose=False, headers=ip(200 + k))
            while not stop.is_set():
                client.predict(PROMPT, seed=k, steps=20, api_name="/generate")
                done[0] += 1
        except Exception:
            pass  # the server is killed under it: that is the point

    threads = [threading.Thread(target=ui_load, args=(k,), daemon=True) for k in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while done[0] < 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    os.kill(app.proc.pid, signal.SIGKILL)
    app.proc.wait(10)
    stop.set()
    t0 = time.monotonic()
    again = start_app([*args, "--outputs", str(outputs)])
    back_s = time.monotonic() - t0
    with httpx.Client(base_url=again.url, timeout=120, headers=ip(250)) as c:
        serving = c.post("/v1/generate", json=SMALL).status_code == 200
    again.stop()
    pngs = [p for p in outputs.rglob("*.png")]
    corrupt = []
    for p in pngs:
        try:
            with Image.open(p) as im:
                im.load()
        except Exception:
            corrupt.append(str(p))
    return {"ui_results_before_kill": done[0], "back_serving_s": round(back_s, 1), "serving_after": serving, "pngs": len(pngs), "corrupt_pngs": len(corrupt),
            "partial_files_left": len(list(outputs.rglob("*.part")))}


def run_memory(url: str, pid: int, n: int) -> dict:
    body = {"prompt": PROMPT, "steps": 1, "sr_steps": 1}
    marks = {}
    with httpx.Client(base_url=url, timeout=120) as c:
        for k in range(n):
            r = c.post("/v1/generate", json={**body, "seed": k}, headers=ip(k % 200))
            assert r.status_code == 200, r.text
            if k + 1 in (100, n // 2, n):
                marks[k + 1] = round(rss_mb(pid), 1)
    first, last = marks[100], marks[n]
    return {"requests": n, "rss_mb": marks, "growth_100_to_last_mb": round(last - first, 1)}


def run_fairness(url: str, solo_runs: int = 5) -> dict:
    ordinary = {"prompt": PROMPT}  # the model's defaults
    long = {"prompt": PROMPT, "steps": 200, "sr_steps": 200, "sampler": "heun", "stream": True}
    with httpx.Client(base_url=url, timeout=300, headers=ip(1)) as light:
        light.post("/v1/generate", json=ordinary)  # warm
        solo = []
        for k in range(solo_runs):
            t0 = time.monotonic()
            assert light.post("/v1/generate", json={**ordinary, "seed": k}).status_code == 200
            solo.append(time.monotonic() - t0)
        stop = threading.Event()
        flood = {"sent": 0, "refused_429": 0}

        def flooder() -> None:
            with httpx.Client(base_url=url, timeout=600, headers=ip(2)) as heavy:
                while not stop.is_set():
                    flood["sent"] += 1
                    with heavy.stream("POST", "/v1/generate", json=long) as r:
                        if r.status_code == 429:
                            flood["refused_429"] += 1
                            time.sleep(0.2)
                            continue
                        for _ in r.iter_lines():
                            if stop.is_set():
                                break

        threads = [threading.Thread(target=flooder, daemon=True) for _ in range(6)]
        for t in threads:
            t.start()
        time.sleep(2)
        loaded = []
        for k in range(solo_runs):
            t0 = time.monotonic()
            assert light.post("/v1/generate", json={**ordinary, "seed": k}).status_code == 200
            loaded.append(time.monotonic() - t0)
        stop.set()
        for t in threads:
            t.join(30)
    s, lo = statistics.median(solo), statistics.median(loaded)
    return {"solo_median_s": round(s, 3), "under_flood_median_s": round(lo, 3), "ratio": round(lo / s, 2), "target_ratio": 3.0,
            "flood_requests_sent": flood["sent"], "flood_refused_429": flood["refused_429"]}


def run_caps(url: str) -> dict:
    from ediff_core.core.images import encode_png

    sketch = base64.b64encode(encode_png(Image.new("RGB", (1024, 1024), "white"))).decode()
    phrases = {f"#{k:06x}": "red circle" for k in range(200)}
    with httpx.Client(base_url=url, timeout=60, headers=ip(3)) as c:
        before = c.get("/health").json()["scheduler"]["admitted"]
        t0 = time.monotonic()
        r = c.post("/v1/paint_with_words", json={**SMALL, "sketch": sketch, "phrases": phrases})
        took = time.monotonic() - t0
        after = c.get("/health").json()["scheduler"]["admitted"]
    return {"status": r.status_code, "field": r.json().get("field"), "seconds": round(took, 3), "admitted_meanwhile": after - before}


# ---------------------------------------------------------------- the suite


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model folder (default: a tiny random model made here)")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--load-s", type=float, default=30.0)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--memory-requests", type=int, default=1000)
    p.add_argument("--schema-examples", type=int, default=20)
    p.add_argument("--only", default=",".join(PARTS))
    a = p.parse_args()
    parts = a.only.split(",")
    work = Path(tempfile.mkdtemp(prefix="ediff-reliability-"))
    model = a.model
    if model is None:
        from ediff_core.tools.tiny import make_tiny_model_folder

        model = str(make_tiny_model_folder(work / "tiny"))
    args = ["--model", model, "--trusted-proxy-header", "X-Forwarded-For"]
    report: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "model": "tiny (random)" if a.model is None else a.model, "cpus": os.cpu_count()}
    app = start_app(args)
    try:
        if "caps" in parts:
            report["caps"] = run_caps(app.url)
        if "schemathesis" in parts:
            report["schemathesis"] = run_schemathesis(app.url, a.schema_examples)
        if "load" in parts:
            report["load"] = run_load(app.url, a.clients, a.load_s)
        if "memory" in parts:
            report["memory"] = run_memory(app.url, app.proc.pid, a.memory_requests)
        if "fairness" in parts:
            report["fairness"] = run_fairness(app.url)
        report["healthy_after"] = httpx.get(f"{app.url}/health", timeout=5).json()["status"]
    finally:
        app.stop()
    if "kill" in parts:
        report["kill"] = run_kill(args, work / "outputs")
    print(json.dumps(report, indent=1))
    if a.json:
        a.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
