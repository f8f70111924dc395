"""Issue #24.1, the upload folder's own corner cases, beside tests/test_reliability.py's table:
files planted *inside* this instance's Gradio upload folder (a FIFO, a symlink to /dev/zero) pass
a folder check and must still be refused (regular files only), and ``/gradio_api/file=`` serves
nothing outside the upload and output folders. Real ``python app.py`` (tiny model), real HTTP."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import httpx
import pytest

from live_server import ROOT, start_app

from test_demo import _file_data, _gradio_call
from test_server import png_bytes, reference

PROMPT = "a red circle and a blue star"
STYLE = lambda f: [PROMPT, f, 1.0, "", 0, 1, 2.0, "euler", "both"]  # noqa: E731


@pytest.fixture(scope="module")
def app(tiny_model):
    proc = start_app(["--model", str(tiny_model)])
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def upload_dir(app) -> Path:
    r = httpx.post(f"{app.url}/gradio_api/upload", files={"files": ("probe.png", png_bytes(reference()), "image/png")}, timeout=20)
    r.raise_for_status()
    return Path(r.json()[0]).parent


def secrets() -> list[bytes]:
    return [Path(p).read_bytes()[:256] for p in ("/etc/passwd", str(ROOT / "app.py")) if Path(p).is_file()]


def health_is_quick(app) -> None:
    t0 = time.monotonic()
    assert httpx.get(f"{app.url}/health", timeout=5).status_code == 200
    assert time.monotonic() - t0 < 1.0


def refused_within_a_second(app, path: str) -> str:
    t0 = time.monotonic()
    try:
        event, payload = _gradio_call(app.url, "style_transfer", STYLE(_file_data(path)), timeout=3)
    except httpx.TimeoutException:
        event, payload = "timeout", "{}"
    assert event == "error" and time.monotonic() - t0 < 1.0, (event, payload[:200])
    return json.loads(payload).get("error") or ""


def test_a_fifo_inside_the_upload_folder_is_refused(app, upload_dir):
    fifo = upload_dir / "inside.png"
    os.mkfifo(fifo)
    try:
        assert "style_image" in refused_within_a_second(app, str(fifo))
    finally:
        try:  # a reader blocked in open() gets EOF once a writer opens and closes
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
        fifo.unlink()
    health_is_quick(app)


@pytest.mark.parametrize("target", ["/dev/zero", "/etc/passwd"])
def test_a_symlink_inside_the_upload_folder_pointing_out_is_refused(app, upload_dir, target):
    link = upload_dir / f"link-{Path(target).name}.png"
    link.symlink_to(target)
    try:
        assert "style_image" in refused_within_a_second(app, str(link))
        r = httpx.get(f"{app.url}/gradio_api/file={link}", timeout=5)
        assert r.status_code in (403, 404) and not any(s in r.content for s in secrets())
    finally:
        link.unlink()
    health_is_quick(app)


@pytest.mark.parametrize("path", ["/etc/passwd", "app.py", "../../../etc/passwd", "/proc/self/environ"])
def test_the_file_route_serves_nothing_outside_the_upload_and_output_folders(app, path):
    r = httpx.get(f"{app.url}/gradio_api/file={path}", timeout=5)
    assert r.status_code in (403, 404), (r.status_code, r.text[:100])
    assert not any(s in r.content for s in secrets()) and b"GRADIO_ANALYTICS_ENABLED=" not in r.content
