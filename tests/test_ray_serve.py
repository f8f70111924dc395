"""``python -m server.ray_serve``: a real local Ray cluster with 2 CPU replicas of the tiny model,
over real HTTP on loopback: every REST endpoint, spreading over replicas, a replica killed with
SIGKILL mid-run (its requests get the retryable 503, the others complete, Ray replaces it), the
protection of ``app.py`` at the ingress (body cap, body deadline, each client's share over every
replica), and the Gradio UI with ``--server-url`` at the ingress (gradio_client).

The server trusts ``X-Forwarded-For`` (``--trusted-proxy-header``), so a test names its clients:
requests sent together from different "addresses" stand for different visitors."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

pytest.importorskip("ray.serve")

from live_server import ROOT, free_port, start_app, wait_healthy  # noqa: E402
from tests.test_server import b64, png_bytes, reference, sketch  # noqa: E402

pytestmark = pytest.mark.serve

PROMPT = "a red circle and a blue star"
FAST = {"steps": 3, "sr_steps": 1}
PER_CLIENT = 2  # --max-per-client
BODY_TIMEOUT_S = 2.0  # --body-timeout


@pytest.fixture(scope="module")
def ray_server(tiny_model):
    """The CLI as users run it; stopped with SIGINT (it shuts Serve and its local cluster down)."""
    port = free_port()
    log = Path(tempfile.mkstemp(prefix="ediff-ray-", suffix=".log")[1])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    cmd = [sys.executable, "-m", "server.ray_serve", "--replicas", "2", "--model", str(tiny_model), "--port", str(port), "--max-queue", "8",
           "--max-per-client", str(PER_CLIENT), "--trusted-proxy-header", "X-Forwarded-For", "--max-file-size", "64kb", "--body-timeout", str(BODY_TIMEOUT_S)]
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, 240, proc, log)
        deadline = time.monotonic() + 120
        while _health(url)["replicas"]["running"] != 2:
            assert time.monotonic() < deadline, "2 replicas never came up"
            time.sleep(1)
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def _health(url: str) -> dict:
    r = httpx.get(f"{url}/health", timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def _post(url: str, route: str, body: dict, timeout: float = 120, client: str | None = None) -> httpx.Response:
    """POST ``body``; ``client``: the address the (trusted) proxy header gives it."""
    return httpx.post(f"{url}{route}", json=body, timeout=timeout, headers={"X-Forwarded-For": client} if client else None)


def test_every_rest_endpoint_answers_through_the_ingress(ray_server):
    h = _health(ray_server)
    assert h["status"] == "ok" and h["replicas"]["running"] == 2 and h["replica"]["pid"] > 0
    info = httpx.get(f"{ray_server}/v1/info", timeout=30)
    assert info.status_code == 200 and info.json()["experts"] and info.headers["x-replica"]
    assert "/v1/generate" in httpx.get(f"{ray_server}/openapi.json", timeout=30).json()["paths"]

    r = _post(ray_server, "/v1/generate", {"prompt": PROMPT, "seed": 1, **FAST})
    assert r.status_code == 200, r.text
    assert base64.b64decode(r.json()["images"][0]["png_base64"]).startswith(b"\x89PNG")
    r = _post(ray_server, "/v1/compare_encoders", {"prompt": PROMPT, "modes": ["t5", "both"], **FAST})
    assert r.status_code == 200 and set(r.json()["modes"]) == {"t5", "both"}
    r = _post(ray_server, "/v1/style_transfer", {"prompt": PROMPT, "style_image": b64(png_bytes(reference())), **FAST})
    assert r.status_code == 200 and r.json()["images"], r.text
    phrases = {"#d72626": "red circle", "#2355d7": "blue star"}
    r = _post(ray_server, "/v1/paint_with_words", {"prompt": PROMPT, "sketch": b64(png_bytes(sketch())), "phrases": phrases, **FAST})
    assert r.status_code == 200 and r.json()["images"], r.text

    bad = _post(ray_server, "/v1/generate", {"prompt": PROMPT, "steps": 0})
    assert bad.status_code == 422 and bad.json()["field"] == "steps"
    with httpx.stream("POST", f"{ray_server}/v1/generate", json={"prompt": PROMPT, "stream": True, **FAST}, timeout=120) as s:
        events = [json.loads(line) for line in s.iter_lines() if line.strip()]
    assert s.headers["content-type"].startswith("application/x-ndjson")
    assert [e["event"] for e in events].count("progress") >= FAST["steps"] and events[-1]["event"] == "result"


def test_concurrent_requests_spread_over_both_replicas(ray_server):
    with ThreadPoolExecutor(8) as pool:
        rs = list(pool.map(lambda k: _post(ray_server, "/v1/generate", {"prompt": PROMPT, "seed": k, "steps": 8, "sr_steps": 1}, client=f"10.0.1.{k}"), range(8)))
    assert all(r.status_code == 200 for r in rs), [r.text[:200] for r in rs if r.status_code != 200]
    served = {r.headers["x-replica"] for r in rs}
    assert len(served) == 2, f"all 8 requests went to {served}"


def _stream_one(url: str, seed: int, seen: dict, client: str | None = None, num_images: int = 1) -> dict:
    """A long streamed request: records its replica at the head; returns its last event."""
    last = {}
    headers = {"X-Forwarded-For": client or f"10.0.2.{seed}"}
    body = {"prompt": PROMPT, "seed": seed, "steps": 200, "sr_steps": 1, "num_images": num_images, "stream": True}
    with httpx.stream("POST", f"{url}/v1/generate", json=body, timeout=180, headers=headers) as s:
        seen[seed] = s.headers["x-replica"]
        for line in s.iter_lines():
            if line.strip():
                last = json.loads(line)
    return last


def _kill_round(ray_server) -> list:
    """Long streamed and plain requests on both replicas, one replica SIGKILLed, Ray's replacement
    awaited; returns the plain requests that were on the killed replica (all 503, retryable)."""
    pids: dict[str, int] = {}
    deadline = time.monotonic() + 60
    while len(pids) < 2 and time.monotonic() < deadline:
        h = _health(ray_server)
        pids[h["replica"]["id"]] = h["replica"]["pid"]
    assert len(pids) == 2, f"/health only ever answered from {pids}"
    seen: dict[int, str] = {}
    with ThreadPoolExecutor(8) as pool:
        streams = {k: pool.submit(_stream_one, ray_server, k, seen) for k in range(4)}
        plain = {k: pool.submit(_post, ray_server, "/v1/generate", {"prompt": PROMPT, "seed": k, "steps": 200, "sr_steps": 1}, 180, f"10.0.2.{k}") for k in range(4, 8)}
        deadline = time.monotonic() + 60
        while (len(seen) < 4 or len(set(seen.values())) < 2) and time.monotonic() < deadline:
            time.sleep(0.2)
        victim = seen[0]
        assert set(seen.values()) == set(pids), f"streams landed on {seen}; replicas {pids}"
        time.sleep(1.0)  # let every request start generating
        os.kill(pids[victim], signal.SIGKILL)
        lasts = {k: f.result(timeout=180) for k, f in streams.items()}
        answers = [f.result(timeout=180) for f in plain.values()]

    for k, last in lasts.items():
        if seen[k] == victim:
            assert last["event"] == "error" and last["status"] == 503 and last["retryable"], last
            assert last["error"] == "replica_unavailable" and "retry" in last["message"]
        else:
            assert last["event"] == "result", last
    died = [r for r in answers if r.status_code == 503]
    for r in answers:
        if r.status_code == 200:
            assert r.headers["x-replica"] != victim
        else:
            assert r.status_code == 503 and int(r.headers["retry-after"]) > 0, r.text
            assert r.json()["error"] == "replica_unavailable" and r.json()["retryable"] is True

    deadline = time.monotonic() + 150
    while True:
        h = _health(ray_server)
        if h["replicas"]["running"] == 2 and h["replica"]["id"] != victim:
            ids = {_health(ray_server)["replica"]["id"] for _ in range(10)} | {h["replica"]["id"]}
            if len(ids - {victim}) == 2:
                break
        assert time.monotonic() < deadline, f"Ray did not bring a second replica back: {h['replicas']}"
        time.sleep(1)
    assert _post(ray_server, "/v1/generate", {"prompt": PROMPT, **FAST}).status_code == 200
    return died


def test_a_killed_replica_fails_its_requests_retryably_and_is_replaced(ray_server):
    # Ray routes plain requests by queue length, so in one round none may be on the victim; every
    # round checks everything else, and some round must see a plain request fail retryably.
    for _ in range(3):
        died = _kill_round(ray_server)
        if died:
            break
    assert died, "in 3 rounds no plain request was on the killed replica"



def _share_round(url: str) -> tuple[httpx.Response, httpx.Response] | None:
    """Two long streams of one client, then its third request and another client's; ``None``
    when a stream ended before the third request was answered (the round proves nothing: a
    replica Ray has just started can hold one stream's head back until the other is done)."""
    seen: dict[int, str] = {}
    with ThreadPoolExecutor(PER_CLIENT) as pool:
        streams = [pool.submit(_stream_one, url, k, seen, "10.0.3.1", 8) for k in range(PER_CLIENT)]
        deadline = time.monotonic() + 60
        while len(seen) < PER_CLIENT and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(seen) == PER_CLIENT, "the long streams never started"
        refused = _post(url, "/v1/generate", {"prompt": PROMPT, **FAST}, client="10.0.3.1")
        both_running = not any(f.done() for f in streams)
        other = _post(url, "/v1/generate", {"prompt": PROMPT, **FAST}, client="10.0.3.2")
        lasts = [f.result(timeout=180) for f in streams]
    assert all(last["event"] == "result" for last in lasts), lasts  # nothing already running was lost
    return (refused, other) if both_running else None


def test_a_client_past_its_share_is_refused_at_the_ingress_whatever_replica_it_would_reach(ray_server):
    for _ in range(3):
        if (found := _share_round(ray_server)) is not None:
            break
        deadline = time.monotonic() + 30  # the ended round's share is released before the next one starts
        while _post(ray_server, "/v1/generate", {"prompt": PROMPT, **FAST}, client="10.0.3.1").status_code == 429 and time.monotonic() < deadline:
            time.sleep(0.2)
    assert found is not None, "in 3 rounds a long stream always ended before the third request was answered"
    refused, other = found
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 0, refused.text
    assert refused.json()["error"] == "too_many_requests" and f"limit {PER_CLIENT}" in refused.json()["message"]
    assert other.status_code == 200, other.text  # another client keeps its share
    assert _post(ray_server, "/v1/generate", {"prompt": PROMPT, **FAST}, client="10.0.3.1").status_code == 200  # released


def test_the_ingress_caps_the_body_and_its_arrival_time(ray_server):
    big = _post(ray_server, "/v1/style_transfer", {"prompt": PROMPT, "style_image": "A" * 200_000, **FAST})
    assert big.status_code == 413 and big.json()["field"] == "body", big.text
    host, port = ray_server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:  # a body that never finishes arriving
        sock.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"prompt\"")
        t0 = time.monotonic()
        reply = b""
        while chunk := sock.recv(4096):  # the answer, up to the close the guard asks for
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert b'"field": "body"' in reply and time.monotonic() - t0 < BODY_TIMEOUT_S + 20
    assert _health(ray_server)["status"] == "ok"


def test_the_ui_with_server_url_generates_through_the_ingress(ray_server):
    from gradio_client import Client

    ui = start_app(["--server-url", ray_server])
    try:
        job = Client(ui.url, verbose=False).submit(prompt=PROMPT, seed=2, steps=3, api_name="/generate")
        gallery, pngs, *_rest, status = job.result(timeout=120)
        assert Path(pngs[0]).read_bytes().startswith(b"\x89PNG") and "done" in status.lower()
        assert len(job.outputs()) > 2, "no progress updates came through the ingress"
        assert httpx.get(f"{ui.url}/health", timeout=30).json()["server"]["replicas"]["running"] == 2
    finally:
        ui.stop()
