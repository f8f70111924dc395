"""The model server: the step-level batching scheduler in-process, and the REST API of a real
``python app.py`` subprocess over real HTTP (tiny random model, a few steps)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import threading
import time
import zlib
from contextlib import ExitStack
from dataclasses import replace

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw

from ediff_core.data.shapes_world import make_scene, render
from ediff_core.features.paint_with_words import PaintSpec
from ediff_core.core.request import GenerationRequest, RequestError
from ediff_core.core.samplers import nfe
from server.model import Model
from server.scheduler import Busy, Cancelled
from live_server import shared_app
from ediff_core.core.images import decode_image

PROMPT = "a red circle and two blue stars on old paper"
FAST = {"steps": 3, "sr_steps": 1}


# ---------------------------------------------------------------- helpers (also used by test_demo)


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def huge_png(side: int = 20000) -> bytes:
    """A valid 1-bit PNG of side × side (all black) in ~50 kB: a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    ihdr = side.to_bytes(4, "big") * 2 + bytes([1, 0, 0, 0, 0])  # bit depth 1, greyscale
    comp, row, idat = zlib.compressobj(9), bytes(1 + (side + 7) // 8), []
    for _ in range(side):
        idat.append(comp.compress(row))
    idat.append(comp.flush())
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(idat)) + chunk(b"IEND", b"")


def corrupt_png() -> bytes:
    """A PNG whose header is fine but whose pixel data is cut off."""
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    data = png_bytes(noisy)
    return data[: len(data) // 2]


def sketch(colours: dict[str, tuple[int, int, int]] | None = None, size: int = 64) -> Image.Image:
    """White canvas; a red disc on the left and a blue box on the right (Shapes World colours)."""
    colours = colours or {"left": (215, 38, 38), "right": (35, 85, 215)}
    img = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(img)
    d.ellipse((4, 18, 30, 44), fill=colours["left"])
    d.rectangle((36, 20, 60, 44), fill=colours["right"])
    return img


def reference(style: str = "night") -> Image.Image:
    return render(make_scene([("star", "yellow", "large", 0.3, 0.3)], style=style), 64)


def decode_result_png(item: dict) -> tuple[Image.Image, dict]:
    img = Image.open(io.BytesIO(base64.b64decode(item["png_base64"])))
    img.load()
    return img, json.loads(img.text["ediff"])


# ---------------------------------------------------------------- in-process scheduler


@pytest.fixture(scope="module")
def model(tiny_pipe):
    m = Model(tiny_pipe, max_queue=4, max_running=4)
    yield m
    m.close()


def _run_threads(model: Model, requests: list[GenerationRequest]) -> list:
    out: list = [None] * len(requests)

    def go(k: int) -> None:
        try:
            out[k] = model(requests[k])
        except Exception as e:  # collected for the assertions
            out[k] = e

    threads = [threading.Thread(target=go, args=(k,)) for k in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return out


def test_scheduler_batches_concurrent_requests_and_matches_direct_calls(model, tiny_pipe):
    before = model.scheduler.stats.as_dict()
    # Different seeds, step counts and guidance scales: requests at different steps share calls.
    reqs = [GenerationRequest(PROMPT, seed=k, steps=3 + k, sr_steps=1, guidance=1.0 + k) for k in range(4)]
    results = _run_threads(model, reqs)
    stats = model.scheduler.stats.as_dict()
    assert stats["max_batch_requests"] > 1, stats
    served = stats["evaluations"] - before["evaluations"]
    calls = stats["calls"] - before["calls"]
    assert served == sum(nfe("dpmpp_2m", r.steps) + nfe("dpmpp_2m", r.sr_steps) for r in reqs)
    assert calls < served, "no evaluation shared a denoiser call"
    for req, res in zip(reqs, results):
        direct = tiny_pipe(req)
        # Same noise and conditioning; only float rounding of batched kernels may differ (and a
        # guidance of 1 batched with others runs as uncond + 1·(cond − uncond) rather than cond).
        diff = np.abs(np.asarray(res.images[0], np.int16) - np.asarray(direct.images[0], np.int16))
        assert diff.max() <= 2, (req.guidance, diff.max())
        assert res.metadata[0]["experts"] == direct.metadata[0]["experts"]


def test_attention_maps_are_recorded_per_request_while_others_run(model, tiny_pipe):
    att = GenerationRequest(PROMPT, seed=2, attention_maps=True, **FAST)
    other = GenerationRequest("two green hearts", seed=1, steps=5, sr_steps=1)
    a, b = _run_threads(model, [att, other])
    direct = tiny_pipe(att)
    assert b.attention is None and a.attention["maps"].shape == direct.attention["maps"].shape
    assert float((a.attention["maps"] - direct.attention["maps"]).abs().max()) == 0.0


def test_cancel_stops_the_request_and_frees_its_slot(model):
    before = model.scheduler.stats.cancelled
    events = model.run(GenerationRequest(PROMPT, steps=200, sr_steps=1))
    first = next(events)
    assert first.done == 1
    events.close()  # what Gradio does when the client goes away
    deadline = time.monotonic() + 20
    while model.scheduler.depth and time.monotonic() < deadline:
        time.sleep(0.02)
    assert model.scheduler.depth == 0
    assert model.scheduler.stats.cancelled == before + 1


def test_queue_bound_refuses_at_once(model):
    held = [model.submit(GenerationRequest(PROMPT, seed=k, steps=200, sr_steps=1)) for k in range(4)]
    try:
        t0 = time.monotonic()
        with pytest.raises(Busy, match="retry later"):
            model.submit(GenerationRequest(PROMPT))
        assert time.monotonic() - t0 < 1.0
    finally:
        for t in held:
            t.cancel()
    for t in held:
        assert t.finished.wait(20)
        with pytest.raises(Cancelled):
            list(t)
    assert model.scheduler.depth == 0


def test_an_error_in_one_request_leaves_the_others_and_the_loop_alive(model):
    bad = GenerationRequest(PROMPT, paint=PaintSpec.from_mapping(sketch(), ["#d72626=yellow square"]), **FAST)
    good = GenerationRequest("two green hearts", seed=3, steps=4, sr_steps=1)
    out = _run_threads(model, [bad, good, replace(good, seed=4)])
    assert isinstance(out[0], RequestError) and "not in the prompt" in str(out[0])
    assert out[1].images[0].size == (32, 32) and out[2].images[0].size == (32, 32)
    assert model(GenerationRequest(PROMPT, **FAST)).images  # the loop still serves


def test_compare_encoders_run_together(model, tiny_pipe):
    req = GenerationRequest(PROMPT, seed=7, **FAST)
    results = {m: e for m, e in model.compare_encoders(req) if not hasattr(e, "done")}
    assert set(results) == {"both", "t5", "clip"}
    for m, res in results.items():
        direct = tiny_pipe(replace(req, encoders=m))
        assert np.abs(np.asarray(res.images[0], np.int16) - np.asarray(direct.images[0], np.int16)).max() <= 2
        assert res.metadata[0]["encoders"] == m


def test_upload_limits_refuse_before_decoding():
    t0 = time.monotonic()
    with pytest.raises(RequestError, match="pixels") as e:
        decode_image(huge_png(), "style_image")
    assert e.value.field == "style_image" and time.monotonic() - t0 < 2.0
    with pytest.raises(RequestError, match="corrupt"):
        decode_image(corrupt_png(), "sketch")
    with pytest.raises(RequestError, match="not an image"):
        decode_image(b"hello, I am text", "sketch")


# ---------------------------------------------------------------- REST API of a real app.py


@pytest.fixture(scope="module")
def app(tiny_model):
    return shared_app("--model", str(tiny_model), "--max-queue", "16", "--max-running", "16", "--max-per-client", "16", "--client-budget", "1e9")


@pytest.fixture(scope="module")
def http(app):
    with httpx.Client(base_url=app.url, timeout=120) as c:
        yield c


def test_health_info_and_openapi(http):
    h = http.get("/health").json()
    assert h["status"] == "ok" and h["model"] == "ediff-tiny-random" and h["queue_depth"] == 0
    info = http.get("/v1/info").json()
    assert [e["name"] for e in info["experts"]] == ["E2_0", "complement_2_2", "E2_3"]
    paths = http.get("/openapi.json").json()["paths"]
    for route in ("/health", "/v1/info", "/v1/generate", "/v1/compare_encoders", "/v1/style_transfer", "/v1/paint_with_words"):
        assert route in paths


def test_generate_serves_the_library_result_with_metadata(http, tiny_pipe):
    r = http.post("/v1/generate", json={"prompt": PROMPT, "seed": 5, "num_images": 2, **FAST})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [im["seed"] for im in body["images"]] == [5, 6]
    direct = tiny_pipe(GenerationRequest(PROMPT, seed=5, num_images=2, **FAST))
    for k, item in enumerate(body["images"]):
        img, meta = decode_result_png(item)
        assert np.array_equal(np.asarray(img.convert("RGB")), np.asarray(direct.images[k]))
        assert meta["seed"] == 5 + k and meta["experts"] == direct.metadata[k]["experts"]
        assert "Seed: %d" % (5 + k) in img.text["parameters"]


def test_generate_streams_progress_then_result(http):
    with http.stream("POST", "/v1/generate", json={"prompt": PROMPT, "stream": True, **FAST}) as r:
        lines = [json.loads(x) for x in r.iter_lines() if x.strip()]
    progress = [x for x in lines if x["event"] == "progress"]
    assert [p["done"] for p in progress] == list(range(1, progress[-1]["total"] + 1))
    assert lines[-1]["event"] == "result" and len(lines[-1]["images"]) == 1


def test_compare_encoders_style_and_paint_routes(http):
    r = http.post("/v1/compare_encoders", json={"prompt": PROMPT, "seed": 1, **FAST})
    assert r.status_code == 200, r.text
    modes = r.json()["modes"]
    assert {m: decode_result_png(v["images"][0])[1]["encoders"] for m, v in modes.items()} == {"clip": "clip", "t5": "t5", "both": "both"}
    assert Image.open(io.BytesIO(base64.b64decode(r.json()["grid_png_base64"]))).width > 32

    r = http.post("/v1/style_transfer", json={"prompt": "two green hearts", "style_image": b64(png_bytes(reference())), "style_strength": 0.8, **FAST})
    assert r.status_code == 200, r.text
    meta = decode_result_png(r.json()["images"][0])[1]
    assert meta["style_image"] == "64x64" and meta["style_strength"] == 0.8

    body = {"prompt": "a red circle and a blue star", "sketch": b64(png_bytes(sketch())), "phrases": {"#d72626": "red circle", "#2355d7": "blue star@0.5"}, **FAST}
    r = http.post("/v1/paint_with_words", json=body)
    assert r.status_code == 200, r.text
    paint = decode_result_png(r.json()["images"][0])[1]["paint"]
    assert [(p["phrase"], p["strength"]) for p in paint["phrases"]] == [("red circle", 1.0), ("blue star", 0.5)]


def test_long_prompt_is_truncated_and_says_so(http):
    long = " ".join(["a red circle left of a blue star"] * 12)  # far past the tiny T5's 24 tokens
    r = http.post("/v1/generate", json={"prompt": long, **FAST})
    assert r.status_code == 200, r.text
    assert any("truncated" in n for n in decode_result_png(r.json()["images"][0])[1]["truncated"])


_SK = b64(png_bytes(sketch()))
BAD_INPUTS = [
    ("/v1/generate", {"prompt": ""}, "prompt", "at least 1"),
    ("/v1/generate", {"prompt": "   "}, "prompt", "non-empty"),
    ("/v1/generate", {"prompt": "x" * 2001}, "prompt", "2000"),
    ("/v1/generate", {"prompt": PROMPT, "steps": 0}, "steps", "from 1 to 200"),
    ("/v1/generate", {"prompt": PROMPT, "steps": 10**6}, "steps", "from 1 to 200"),
    ("/v1/generate", {"prompt": PROMPT, "guidance": "NaN"}, "guidance", "finite"),
    ("/v1/generate", {"prompt": PROMPT, "sampler": "ddim"}, "sampler", "dpmpp_2m"),
    ("/v1/generate", {"prompt": PROMPT, "num_images": 99}, "num_images", "from 1 to 8"),
    ("/v1/style_transfer", {"prompt": PROMPT, "style_image": b64(b"GIF? no, plain text")}, "style_image", "not an image"),
    ("/v1/style_transfer", {"prompt": PROMPT, "style_image": "%%%not base64"}, "style_image", "base64"),
    ("/v1/style_transfer", {"prompt": PROMPT, "style_image": b64(corrupt_png())}, "style_image", "corrupt"),
    ("/v1/style_transfer", {"prompt": PROMPT, "style_image": b64(huge_png())}, "style_image", "pixels"),
    ("/v1/paint_with_words", {"prompt": PROMPT, "sketch": _SK, "phrases": {"#00ff00": "red circle"}}, "sketch", "no pixel"),
    ("/v1/paint_with_words", {"prompt": PROMPT, "sketch": _SK, "phrases": {"#d72626": "yellow square"}}, "phrases", "not in the prompt"),
    ("/v1/paint_with_words", {"prompt": PROMPT, "sketch": _SK, "phrases": {}}, "phrases", "at least one"),
]


@pytest.mark.parametrize("route,body,field,words", BAD_INPUTS, ids=[f"{b[2]}:{b[3]}" for b in BAD_INPUTS])
def test_bad_input_names_the_field_and_server_stays_healthy(http, route, body, field, words):
    if body.get("guidance") == "NaN":  # JSON has no NaN; send Python's extension literally
        r = http.post(route, content=json.dumps({**FAST, **body, "guidance": float("nan")}), headers={"content-type": "application/json"})
    else:
        r = http.post(route, json={**FAST, **body})
    assert r.status_code == 422, r.text
    err = r.json()
    assert err["field"] == field and words in err["message"] and field in err["message"], err
    assert http.get("/health").json()["status"] == "ok"


def test_sixteen_simultaneous_requests_complete(app):
    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=app.url, timeout=180) as c:
            return await asyncio.gather(*[c.post("/v1/generate", json={"prompt": PROMPT, "seed": k, **FAST}) for k in range(16)])

    responses = asyncio.run(main())
    assert [r.status_code for r in responses] == [200] * 16
    assert sorted(r.json()["images"][0]["seed"] for r in responses) == list(range(16))
    assert httpx.get(f"{app.url}/health").json()["scheduler"]["max_batch_requests"] > 1


def test_a_client_that_gives_up_cancels_its_request(http):
    before = http.get("/health").json()["scheduler"]["cancelled"]
    with pytest.raises(httpx.ReadTimeout):  # the client stops waiting and closes the connection
        httpx.post(f"{str(http.base_url).rstrip('/')}/v1/generate", json={"prompt": PROMPT, "steps": 200, "sr_steps": 200, "sampler": "heun"}, timeout=1.5)
    deadline = time.monotonic() + 20
    while (h := http.get("/health").json())["queue_depth"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert h["queue_depth"] == 0 and h["scheduler"]["cancelled"] == before + 1


def test_past_the_queue_bound_busy_then_disconnects_cancel(app, http):
    from gradio_client import Client

    before = http.get("/health").json()["scheduler"]["cancelled"]
    with ExitStack() as stack:
        lines = []  # kept alive: dropping a line iterator closes its connection (= a disconnect)
        for k in range(16):  # fill the queue with long requests, each started
            r = stack.enter_context(http.stream("POST", "/v1/generate", json={"prompt": PROMPT, "seed": k, "steps": 200, "sr_steps": 200, "sampler": "heun", "stream": True}))
            assert r.status_code == 200
            lines.append(r.iter_lines())
            assert json.loads(next(lines[-1]))["event"] == "progress"
        assert http.get("/health").json()["queue_depth"] == 16
        busy = http.post("/v1/generate", json={"prompt": PROMPT, **FAST})
        assert busy.status_code == 503 and "retry later" in busy.json()["message"] and busy.headers["retry-after"]
        with pytest.raises(Exception, match="busy"):
            Client(app.url, verbose=False).predict(prompt=PROMPT, steps=3, api_name="/generate")
    # Closing the streams disconnected the clients: every request stops and frees its slot.
    deadline = time.monotonic() + 30
    while (h := http.get("/health").json())["queue_depth"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert h["queue_depth"] == 0 and h["scheduler"]["cancelled"] >= before + 16
    assert http.post("/v1/generate", json={"prompt": PROMPT, **FAST}).status_code == 200
