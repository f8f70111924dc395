"""Issue #24.6, the fast subset: the bad-input table against a real ``python app.py`` (tiny
model) over real HTTP, REST and ``gradio_client`` alike, written as a user of the server would.

Every case must be refused with a clear error naming the field; every server path named as an
upload (point 1) is refused in < 1 s; /health answers in < 1 s throughout (a watcher thread polls
it) and the server is healthy after; nothing from outside the upload folder lands in a cache.
Cases for behaviours of #24.2-4 that main does not have yet are ``xfail(strict=True)``: the
integrator removes the mark when the behaviour lands. The full suite: ``scripts/reliability.py``.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import threading
import time
from pathlib import Path

import httpx
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from server.testing import ROOT, start_app

from test_demo import _file_data, _gradio_call
from test_server import b64, corrupt_png, huge_png, png_bytes, reference, sketch

PROMPT = "a red circle and a blue star"
FAST = {"steps": 1, "sr_steps": 1}
HEALTH_S = 1.0  # the "done when": /health answers in < 1 s throughout
PATH_REFUSAL_S = 1.0


def pending(point: str, what: str):
    return pytest.mark.xfail(strict=True, reason=f"#24.{point} pending on main: {what}")


def image_bytes(fmt: str, img: Image.Image | None = None) -> bytes:
    buf = io.BytesIO()
    (img or reference()).save(buf, format=fmt)
    return buf.getvalue()


def many_colour_sketch(n: int) -> tuple[bytes, dict[str, str]]:
    """A sketch with ``n`` distinct colours in columns, each mapped to the word "red"."""
    img = Image.new("RGB", (4 * n, 16), "white")
    phrases = {}
    for k in range(n):
        rgb = (k % 256, (k * 7) % 256, 100 + k // 256)
        img.paste(rgb, (4 * k, 0, 4 * k + 4, 16))
        phrases["#{:02x}{:02x}{:02x}".format(*rgb)] = "red"
    return png_bytes(img), phrases


class HealthWatch(threading.Thread):
    """Polls /health every 0.2 s; records the slowest answer and any failure."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.stop_event, self.slowest, self.failures, self.polls = url, threading.Event(), 0.0, [], 0

    def run(self) -> None:
        with httpx.Client(timeout=5) as c:
            while not self.stop_event.wait(0.2):
                t0 = time.monotonic()
                try:
                    ok = c.get(f"{self.url}/health").status_code == 200
                except httpx.HTTPError as e:
                    ok = False
                    self.failures.append(repr(e))
                self.slowest = max(self.slowest, time.monotonic() - t0)
                self.polls += 1
                if not ok and not self.failures:
                    self.failures.append("status != 200")


@pytest.fixture(scope="module")
def app(tiny_model, tmp_path_factory):
    outputs = tmp_path_factory.mktemp("rel-outputs")
    proc = start_app(["--model", str(tiny_model), "--outputs", str(outputs)])
    proc.outputs = outputs
    watch = HealthWatch(proc.url)
    watch.start()
    proc.watch = watch
    yield proc
    watch.stop_event.set()
    watch.join(5)
    proc.stop()


@pytest.fixture(scope="module")
def client(app):
    return Client(app.url, verbose=False)


@pytest.fixture(scope="module")
def upload_dir(app, tmp_path_factory):
    """This instance's own Gradio upload folder (one file uploaded to find it)."""
    r = httpx.post(f"{app.url}/gradio_api/upload", files={"files": ("probe.png", png_bytes(reference()), "image/png")}, timeout=20)
    r.raise_for_status()
    uploaded = Path(r.json()[0])
    return uploaded.parent


def health_is_quick(app) -> None:
    t0 = time.monotonic()
    r = httpx.get(f"{app.url}/health", timeout=5)
    assert r.status_code == 200 and r.json()["status"] == "ok"
    assert time.monotonic() - t0 < HEALTH_S


# ---------------------------------------------------------------- REST

GOOD_STYLE = b64(png_bytes(reference()))
GOOD_SKETCH = b64(png_bytes(sketch()))
PHRASES = {"#d72626": "red circle", "#2355d7": "blue star"}
BASE = {
    "generate": {"prompt": PROMPT, **FAST},
    "compare_encoders": {"prompt": PROMPT, **FAST},
    "style_transfer": {"prompt": PROMPT, "style_image": GOOD_STYLE, **FAST},
    "paint_with_words": {"prompt": PROMPT, "sketch": GOOD_SKETCH, "phrases": PHRASES, **FAST},
}
_MISSING = object()
SEED_MAX = 2**32 - 1
PHRASES_200 = many_colour_sketch(200)

# (endpoint, changes to the endpoint's good body (_MISSING drops a key), field named, marks)
REST: list[tuple] = []
for ep in BASE:  # the common fields, on every endpoint
    REST += [
        (ep, {"prompt": _MISSING}, "prompt"),
        (ep, {"prompt": ""}, "prompt"),
        (ep, {"prompt": "x" * 2001}, "prompt"),
        (ep, {"prompt": 123}, "prompt"),
        (ep, {"seed": -1}, "seed"),
        (ep, {"seed": SEED_MAX + 1}, "seed"),
        (ep, {"steps": 0}, "steps"),
        (ep, {"steps": 10**6}, "steps"),
        (ep, {"guidance": -1}, "guidance"),
        (ep, {"sampler": "ddim"}, "sampler"),
        (ep, {"unknown_field": 1}, "unknown_field"),
        (ep, {"steps": "5"}, "steps", pending("4", "strict types: steps '5' is coerced to 5")),
        (ep, {"steps": True}, "steps", pending("4", "strict types: steps true is coerced to 1")),
    ]
REST += [
    ("generate", {"prompt": None}, "prompt"),
    ("generate", {"negative_prompt": "x" * 2001}, "negative_prompt"),
    ("generate", {"seed": 1.5}, "seed"),
    ("generate", {"seed": "abc"}, "seed"),
    ("generate", {"steps": -5}, "steps"),
    ("generate", {"steps": 2.5}, "steps"),
    ("generate", {"sr_steps": 0}, "sr_steps"),
    ("generate", {"sr_steps": 10**6}, "sr_steps"),
    ("generate", {"guidance": 51}, "guidance"),
    ("generate", {"guidance": "high"}, "guidance"),
    ("generate", {"sr_guidance": 100}, "sr_guidance"),
    ("generate", {"sampler": 3}, "sampler"),
    ("generate", {"encoders": "bert"}, "encoders"),
    ("generate", {"encoders": None}, "encoders"),
    ("generate", {"num_images": 0}, "num_images"),
    ("generate", {"num_images": 9}, "num_images"),
    ("generate", {"num_images": 100000}, "num_images"),
    ("generate", {"dynamic_threshold": "maybe"}, "dynamic_threshold"),
    ("generate", {"stream": "sometimes"}, "stream"),
    ("generate", {"guidance": "3"}, "guidance", pending("4", "strict types: guidance '3' is coerced")),
    ("generate", {"dynamic_threshold": "true"}, "dynamic_threshold", pending("4", "strict types: booleans given as strings are coerced")),
    ("generate", {"num_images": True}, "num_images", pending("4", "strict types: num_images true is coerced to 1")),
    ("compare_encoders", {"modes": []}, "modes"),
    ("compare_encoders", {"modes": ["bert"]}, "modes"),
    ("compare_encoders", {"modes": ["clip", "t5", "both", "clip"]}, "modes"),
    ("compare_encoders", {"modes": "clip"}, "modes"),
    ("style_transfer", {"style_image": _MISSING}, "style_image"),
    ("style_transfer", {"style_image": ""}, "style_image"),
    ("style_transfer", {"style_image": "not base64 !!"}, "style_image"),
    ("style_transfer", {"style_image": b64(b"this is not an image")}, "style_image"),
    ("style_transfer", {"style_image": b64(corrupt_png())}, "style_image"),
    ("style_transfer", {"style_image": b64(huge_png())}, "style_image"),
    ("style_transfer", {"style_image": "data:image/png;base64,AAAA"}, "style_image"),
    ("style_transfer", {"style_image": 123}, "style_image"),
    ("style_transfer", {"style_image": b64(image_bytes("TIFF"))}, "style_image"),
    ("style_transfer", {"style_image": b64(image_bytes("GIF"))}, "style_image", pending("4", "GIF is accepted though the docs say PNG/JPEG/WebP")),
    ("style_transfer", {"style_image": b64(image_bytes("BMP"))}, "style_image", pending("4", "BMP is accepted though the docs say PNG/JPEG/WebP")),
    ("style_transfer", {"style_strength": -1}, "style_strength"),
    ("style_transfer", {"style_strength": 11}, "style_strength"),
    ("style_transfer", {"style_strength": "strong"}, "style_strength"),
    # point 1 over REST: a path is never an image
    ("style_transfer", {"style_image": "/etc/passwd"}, "style_image"),
    ("style_transfer", {"style_image": "file:///etc/passwd"}, "style_image"),
    ("style_transfer", {"style_image": {"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}}, "style_image"),
    ("paint_with_words", {"sketch": "/dev/zero"}, "sketch"),
    ("paint_with_words", {"sketch": {"path": "/dev/zero"}}, "sketch"),
    ("paint_with_words", {"sketch": _MISSING}, "sketch"),
    ("paint_with_words", {"sketch": b64(corrupt_png())}, "sketch"),
    ("paint_with_words", {"sketch": b64(huge_png())}, "sketch"),
    ("paint_with_words", {"sketch": b64(b"GIF89a not really")}, "sketch"),
    ("paint_with_words", {"sketch": b64(image_bytes("GIF", sketch()))}, "sketch", pending("4", "a GIF sketch is accepted")),
    ("paint_with_words", {"phrases": _MISSING}, "phrases"),
    ("paint_with_words", {"phrases": 123}, "phrases"),
    ("paint_with_words", {"phrases": "{not json"}, "phrases"),
    ("paint_with_words", {"phrases": {"#00ff00": "red circle"}}, "sketch"),
    ("paint_with_words", {"phrases": {"#d72626": "yellow square"}}, "phrases"),
    ("paint_with_words", {"phrases": {"zzz": "red circle"}}, "phrases"),
    ("paint_with_words", {"phrases": ["#d72626"]}, "phrases"),
    ("paint_with_words", {"phrases": {"rgb(999,0,0)": "red circle"}}, "phrases"),
    ("paint_with_words", {"pww_weight": -1}, "pww_weight"),
    ("paint_with_words", {"pww_weight": 11}, "pww_weight"),
    ("paint_with_words", {"pww_weight": "x"}, "pww_weight"),
    ("paint_with_words", {"sketch": b64(PHRASES_200[0]), "phrases": PHRASES_200[1], "prompt": "a red circle"}, "phrases", pending("2", "no cap on the number of phrases")),
    ("paint_with_words", {"prompt": "red " * 400, "phrases": {"#d72626": ("red " * 400).strip()}}, "phrases", pending("2", "no cap on the tokens of one phrase")),
]


def _body(endpoint: str, changes: dict) -> dict:
    body = dict(BASE[endpoint])
    for k, v in changes.items():
        if v is _MISSING:
            body.pop(k, None)
        else:
            body[k] = v
    return body


def _params(table: list[tuple]) -> list:
    out = []
    for k, (endpoint, changes, field, *marks) in enumerate(table):
        out.append(pytest.param(endpoint, changes, field, marks=marks, id=f"{endpoint}:{field}:{k}"))
    return out


@pytest.mark.parametrize("endpoint,changes,field", _params(REST))
def test_rest_bad_input_is_a_422_naming_the_field(app, endpoint, changes, field):
    t0 = time.monotonic()
    r = httpx.post(f"{app.url}/v1/{endpoint}", json=_body(endpoint, changes), timeout=30)
    assert r.status_code == 422, (r.status_code, r.text[:300])
    body = r.json()
    assert body["field"].split(".")[0] == field and field in body["message"], body
    if isinstance(changes.get("phrases"), dict) and len(changes["phrases"]) >= 200:
        assert time.monotonic() - t0 < 1.0  # refused before any rasterising or queueing
    health_is_quick(app)


RAW = [  # bodies that are not JSON objects: the error names the body, never a byte offset
    (b"", "body", None),
    (b"[1, 2]", "body", None),
    (b'"a string"', "body", None),
    (b'{"prompt": "a red circle", "guidance": NaN}', "guidance", None),
    (b'{"prompt": "a red circle", "guidance": Infinity}', "guidance", None),
    (b'{"prompt": "a red circle",', "body", pending("4", "malformed JSON names a byte offset as the field")),
    (b"\xff\xfe not utf-8", "body", pending("4", "malformed JSON names a byte offset as the field")),
]


@pytest.mark.parametrize("content,field", [pytest.param(c, f, marks=[m] if m else [], id=f"raw:{k}") for k, (c, f, m) in enumerate(RAW)])
def test_rest_body_that_is_not_an_object_names_the_field(app, content, field):
    r = httpx.post(f"{app.url}/v1/generate", content=content, headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 422 and r.json()["field"] == field and field in r.json()["message"], r.text[:300]
    health_is_quick(app)


@pending("3", "no request body cap (413)")
def test_a_body_far_over_the_cap_is_a_413(app):
    r = httpx.post(f"{app.url}/v1/generate", json={"prompt": "x" * (32 * 2**20)}, timeout=60)
    assert r.status_code == 413, (r.status_code, r.text[:200])
    health_is_quick(app)


@pending("3", "no per-client cap on requests in flight (429 + Retry-After)")
def test_one_client_flooding_long_requests_gets_429_with_retry_after(app):
    """24 long requests at once from one address: the per-client cap answers 429 at once."""

    async def flood() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=app.url, timeout=30) as c:
            tasks = [asyncio.create_task(c.post("/v1/generate", json={"prompt": PROMPT, "steps": 200, "num_images": 8, "seed": k})) for k in range(24)]
            done, waiting = await asyncio.wait(tasks, timeout=5)
            for t in waiting:
                t.cancel()  # the connection closes: the server cancels the request
            await asyncio.gather(*waiting, return_exceptions=True)
            return [t.result() for t in done if t.exception() is None]

    answered = asyncio.run(flood())
    try:
        refused = [r for r in answered if r.status_code == 429]
        assert refused, [r.status_code for r in answered]
        assert int(refused[0].headers["Retry-After"]) >= 1
        assert refused[0].json()["error"] == "too_many_requests"
    finally:
        deadline = time.monotonic() + 60
        while httpx.get(f"{app.url}/health", timeout=5).json()["queue_depth"] and time.monotonic() < deadline:
            time.sleep(0.2)
    health_is_quick(app)


# ---------------------------------------------------------------- gradio_client


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("rel-uploads")
    out = {
        "reference": ("night.png", png_bytes(reference())),
        "sketch": ("sketch.png", png_bytes(sketch(size=128))),
        "text": ("notes.png", b"this is not an image"),
        "corrupt": ("corrupt.png", corrupt_png()),
        "huge": ("huge.png", huge_png()),
        "gif": ("ref.gif", image_bytes("GIF")),
        "bmp": ("ref.bmp", image_bytes("BMP")),
        "many": ("many.png", PHRASES_200[0]),
    }
    paths = {}
    for key, (name, data) in out.items():
        (d / name).write_bytes(data)
        paths[key] = str(d / name)
    return paths


G = {"steps": 1}
GRADIO: list[tuple] = [
    ("/generate", {"prompt": ""}, "prompt"),
    ("/generate", {"prompt": "x" * 2001}, "prompt"),
    ("/generate", {"prompt": PROMPT, "steps": 0}, "steps"),
    ("/generate", {"prompt": PROMPT, "steps": 10**6}, "steps"),
    ("/generate", {"prompt": PROMPT, "steps": 2.5}, "steps"),
    ("/generate", {"prompt": PROMPT, "guidance": 1e9}, "guidance"),
    ("/generate", {"prompt": PROMPT, "seed": -1}, "seed"),
    ("/generate", {"prompt": PROMPT, "seed": SEED_MAX + 1}, "seed"),
    ("/generate", {"prompt": PROMPT, "num_images": 0}, "num_images"),
    ("/generate", {"prompt": PROMPT, "num_images": 99}, "num_images"),
    ("/generate", {"prompt": PROMPT, "sampler": "ddim"}, "sampler", pending("4", "Gradio's error for sampler does not name the field")),
    ("/generate", {"prompt": PROMPT, "encoders": "bert"}, "encoders", pending("4", "Gradio's error for encoders does not name the field")),
    ("/compare_encoders", {"prompt": ""}, "prompt"),
    ("/compare_encoders", {"prompt": PROMPT, "steps": 0}, "steps"),
    ("/compare_encoders", {"prompt": PROMPT, "seed": -1}, "seed"),
    ("/style_transfer", {"prompt": PROMPT, "style_image": "text"}, "style_image"),
    ("/style_transfer", {"prompt": PROMPT, "style_image": "corrupt"}, "style_image"),
    ("/style_transfer", {"prompt": PROMPT, "style_image": "huge"}, "style_image"),
    ("/style_transfer", {"prompt": "", "style_image": "reference"}, "prompt"),
    ("/style_transfer", {"prompt": PROMPT, "style_image": "reference", "steps": 0}, "steps"),
    ("/style_transfer", {"prompt": PROMPT, "style_image": "gif"}, "style_image", pending("4", "GIF is accepted")),
    ("/style_transfer", {"prompt": PROMPT, "style_image": "bmp"}, "style_image", pending("4", "BMP is accepted")),
    ("/paint_with_words", {"prompt": PROMPT, "sketch": "sketch", "phrases": '{"#00ff00": "red circle"}'}, "sketch"),
    ("/paint_with_words", {"prompt": PROMPT, "sketch": "sketch", "phrases": '{"#d72626": "yellow square"}'}, "phrases"),
    ("/paint_with_words", {"prompt": PROMPT, "sketch": "sketch", "phrases": "{not json"}, "phrases"),
    ("/paint_with_words", {"prompt": PROMPT, "sketch": "corrupt", "phrases": '{"#d72626": "red circle"}'}, "sketch"),
    ("/paint_with_words", {"prompt": PROMPT, "sketch": "text", "phrases": '{"#d72626": "red circle"}'}, "sketch"),
    ("/paint_with_words", {"prompt": PROMPT, "sketch": "sketch", "phrases": '{"zzz": "red circle"}'}, "phrases"),
    ("/paint_with_words", {"prompt": "a red circle", "sketch": "many", "phrases": json.dumps(PHRASES_200[1])}, "phrases", pending("2", "no cap on the number of phrases")),
]


@pytest.mark.parametrize("endpoint,args,field", _params(GRADIO))
def test_gradio_bad_input_is_an_error_naming_the_field(app, client, files, endpoint, args, field):
    args = {k: handle_file(files[v]) if k in ("style_image", "sketch") else v for k, v in args.items()}
    with pytest.raises(Exception) as e:
        client.predict(api_name=endpoint, **{**G, **args})
    assert f"{field}:" in str(e.value), str(e.value)[:300]
    health_is_quick(app)


# ---------------------------------------------------------------- point 1: server paths


def _secrets() -> list[bytes]:
    """Contents that must never reach a cache: files named in the attacks, the server's env."""
    out = [Path(p).read_bytes()[:256] for p in ("/etc/passwd", "/etc/hostname", str(ROOT / "app.py"), __file__) if Path(p).is_file()]
    return out + [b"GRADIO_ANALYTICS_ENABLED="]


def assert_no_leak(*folders: Path) -> None:
    secrets = _secrets()
    for folder in folders:
        for f in Path(folder).rglob("*"):
            if f.is_symlink() or not f.is_file():
                continue
            head = f.read_bytes()[:4096]
            assert not any(s and (head.startswith(s) or s in head) for s in secrets), f


def attacks(upload_dir: Path, tmp: Path) -> dict[str, str]:
    fifo = tmp / "outside.fifo"
    if not fifo.exists():
        os.mkfifo(fifo)
    link_pw, link_zero = upload_dir / "link-passwd.png", upload_dir / "link-zero.png"
    for link, target in ((link_pw, "/etc/passwd"), (link_zero, "/dev/zero")):
        if not link.is_symlink():
            os.symlink(target, link)
    return {
        "dev-zero": "/dev/zero",
        "fifo-outside": str(fifo),
        "etc-passwd": "/etc/passwd",
        "app-py-relative": "app.py",
        "app-py-absolute": str(ROOT / "app.py"),
        "dotdot": "/tmp/../etc/passwd",
        "dotdot-from-upload-dir": str(upload_dir / ".." / ".." / ".." / "etc" / "passwd"),
        "relative-dotdot": "../../../../etc/passwd",
        "symlink-in-upload-dir-to-passwd": str(link_pw),
        "symlink-in-upload-dir-to-dev-zero": str(link_zero),
        "proc-self-environ": "/proc/self/environ",
        "missing": "/nonexistent/file.png",
    }


ATTACK_NAMES = ["dev-zero", "fifo-outside", "etc-passwd", "app-py-relative", "app-py-absolute", "dotdot", "dotdot-from-upload-dir", "relative-dotdot", "symlink-in-upload-dir-to-passwd", "symlink-in-upload-dir-to-dev-zero", "proc-self-environ", "missing"]
PATH_ENDPOINTS = {
    "style_transfer": lambda f: [PROMPT, f, 1.0, "", 0, 1, 2.0, "euler", "both"],
    "paint_with_words": lambda f: [PROMPT, f, '{"#d72626": "red circle"}', 0.4, "", 0, 1, 2.0, "euler"],
}
_refusals: dict[tuple[str, str], str] = {}


@pytest.mark.parametrize("endpoint", list(PATH_ENDPOINTS))
@pytest.mark.parametrize("attack", ATTACK_NAMES)
def test_a_server_path_is_refused_at_once_and_reaches_no_cache(app, upload_dir, tmp_path, endpoint, attack):
    path = attacks(upload_dir, tmp_path)[attack]
    t0 = time.monotonic()
    event, payload = _gradio_call(app.url, endpoint, PATH_ENDPOINTS[endpoint](_file_data(path)), timeout=10)
    elapsed = time.monotonic() - t0
    assert event == "error", (event, payload[:200])
    assert elapsed < PATH_REFUSAL_S, elapsed
    _refusals[(endpoint, attack)] = json.loads(payload).get("error") or ""
    health_is_quick(app)
    assert_no_leak(upload_dir.parent, app.outputs)


def test_every_refused_path_gets_one_text_whether_or_not_it_exists(app, upload_dir, tmp_path):
    """No file-system oracle: with the path itself blanked, the texts are all the same."""
    if len(_refusals) < 4:
        for attack in ("etc-passwd", "missing", "dev-zero", "app-py-absolute"):
            test_a_server_path_is_refused_at_once_and_reaches_no_cache(app, upload_dir, tmp_path, "style_transfer", attack)
    texts = {re.sub(r"\S*/\S*|app\.py", "<path>", t) for t in _refusals.values()}
    assert len(texts) == 1, texts


@pending("1/4", "Gradio's refusal of a server path does not name the field (style_image / sketch)")
@pytest.mark.parametrize("endpoint,field", [("style_transfer", "style_image"), ("paint_with_words", "sketch")])
def test_a_refused_path_names_the_field(app, endpoint, field):
    event, payload = _gradio_call(app.url, endpoint, PATH_ENDPOINTS[endpoint](_file_data("/etc/passwd")), timeout=10)
    assert event == "error" and f"{field}:" in (json.loads(payload).get("error") or ""), payload[:300]


@pending("1", "a FIFO inside the upload folder passes Gradio's check and is opened: the request blocks")
def test_a_fifo_inside_the_upload_folder_is_refused(app, upload_dir):
    fifo = upload_dir / "inside.fifo.png"
    if not fifo.exists():
        os.mkfifo(fifo)
    try:
        t0 = time.monotonic()
        try:
            event, _ = _gradio_call(app.url, "style_transfer", PATH_ENDPOINTS["style_transfer"](_file_data(str(fifo))), timeout=3)
        except httpx.TimeoutException:
            event = "timeout"
        assert event == "error" and time.monotonic() - t0 < PATH_REFUSAL_S, event
    finally:
        try:  # a reader blocked in open() gets EOF once a writer opens and closes
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
        fifo.unlink()
    health_is_quick(app)


@pytest.mark.parametrize("path", ["/etc/passwd", "app.py", "../../../etc/passwd", "/proc/self/environ", "link-passwd.png"])
def test_the_file_route_serves_nothing_outside_the_upload_and_output_folders(app, upload_dir, tmp_path, path):
    attacks(upload_dir, tmp_path)  # makes the symlink
    if path == "link-passwd.png":
        path = str(upload_dir / path)
    r = httpx.get(f"{app.url}/gradio_api/file={path}", timeout=5)
    assert r.status_code in (403, 404), (r.status_code, r.text[:100])
    assert not any(s in r.content for s in _secrets() if s)


def test_the_server_stayed_healthy_and_quick_throughout(app, upload_dir):
    for link in upload_dir.glob("link-*.png"):
        link.unlink()
    watch = app.watch
    assert watch.polls > 0 and not watch.failures, watch.failures[:3]
    assert watch.slowest < HEALTH_S, watch.slowest
    h = httpx.get(f"{app.url}/health", timeout=5).json()
    assert h["status"] == "ok" and h["scheduler"]["failed"] == 0, h
    r = httpx.post(f"{app.url}/v1/generate", json={"prompt": PROMPT, **FAST}, timeout=60)
    assert r.status_code == 200 and len(r.json()["images"]) == 1
    assert_no_leak(upload_dir.parent, app.outputs)
