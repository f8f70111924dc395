"""The Gradio demo end to end through ``gradio_client`` against a real ``python app.py``
(tiny random model): every named endpoint, bad inputs, the UI-only mode (--server-url), auth."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.utils import Status
from PIL import Image

from demo.ui import mapping_from_rows, phrases_from_prompt
from demo.runner import schedule_rows, schedule_summary
from live_server import ThreadServer, shared_app, start_app

from test_server import PROMPT, corrupt_png, huge_png, reference, sketch

FAST = {"steps": 3}


@pytest.fixture(scope="module")
def app(tiny_model):
    return shared_app("--model", str(tiny_model), "--max-queue", "16", "--max-running", "16", "--max-per-client", "16", "--client-budget", "1e9")


@pytest.fixture(scope="module")
def client(app):
    return Client(app.url, verbose=False)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Upload files: a reference render, a sketch, a text file, a corrupt PNG, a 20000² PNG."""
    d = tmp_path_factory.mktemp("uploads")
    out = {"reference": d / "night.png", "sketch": d / "sketch.png", "text": d / "notes.png", "corrupt": d / "corrupt.png", "huge": d / "huge.png"}
    reference().save(out["reference"])
    sketch(size=128).save(out["sketch"])
    out["text"].write_text("this is not an image")
    out["corrupt"].write_bytes(corrupt_png())
    out["huge"].write_bytes(huge_png())
    return {k: str(v) for k, v in out.items()}


def png_meta(path: str) -> dict:
    img = Image.open(path)
    img.load()
    assert "parameters" in img.text
    return json.loads(img.text["ediff"])


def test_named_endpoints_have_named_parameters(client):
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    names = {k: [p["parameter_name"] for p in v["parameters"]] for k, v in api.items()}
    assert set(names) == {"/generate", "/compare_encoders", "/style_transfer", "/paint_with_words"}
    assert names["/generate"][:8] == ["prompt", "negative_prompt", "seed", "steps", "guidance", "sampler", "encoders", "num_images"]
    assert {"prompt", "style_image", "style_strength"} <= set(names["/style_transfer"])
    assert {"prompt", "sketch", "phrases", "pww_weight"} <= set(names["/paint_with_words"])


def test_generate_returns_png_files_with_metadata_schedule_and_attention(client):
    gallery, downloads, schedule, summary, meta_json, attention, status = client.predict(
        prompt=PROMPT, seed=11, num_images=2, attention_maps=True, api_name="/generate", **FAST
    )
    assert len(gallery) == 2 and len(downloads) == 2 and "done" in status
    metas = [png_meta(p) for p in downloads]
    assert [m["seed"] for m in metas] == [11, 12]
    assert png_meta(gallery[0]["image"])["seed"] == 11  # the gallery serves the same PNG, metadata kept
    assert Image.open(downloads[0]).size == (32, 32)
    rows = schedule["data"]
    assert [r[3] for r in rows] == [e["expert"] for st in metas[0]["experts"].values() for e in st]
    assert "E2_3" in summary and json.loads(meta_json)[0]["seed"] == 11
    assert {a["caption"] for a in attention} >= {"<null>", "red", "circle"}


def test_compare_encoders_endpoint(client):
    clip, t5, both, downloads, status = client.predict(prompt=PROMPT, seed=4, api_name="/compare_encoders", **FAST)
    assert [png_meta(p)["encoders"] for p in (clip, t5, both)] == ["clip", "t5", "both"]
    assert {png_meta(p)["seed"] for p in downloads} == {4}
    a, b = (np.asarray(Image.open(p)) for p in (clip, both))
    assert not np.array_equal(a, b)


def test_style_transfer_endpoint(client, files):
    out = client.predict(prompt="two green hearts", style_image=handle_file(files["reference"]), style_strength=0.7, api_name="/style_transfer", **FAST)
    meta = png_meta(out[1][0])
    assert meta["style_image"] == "64x64" and meta["style_strength"] == 0.7


def test_paint_with_words_endpoint(client, files):
    phrases = json.dumps({"#d72626": "red circle", "#2355d7": "blue star"})
    out = client.predict(prompt="a red circle and a blue star", sketch=handle_file(files["sketch"]), phrases=phrases, pww_weight=0.5, api_name="/paint_with_words", **FAST)
    meta = png_meta(out[1][0])
    assert [p["phrase"] for p in meta["paint"]["phrases"]] == ["red circle", "blue star"] and meta["pww_weight"] == 0.5
    lines = "#d72626=red circle@2\n#2355d7=blue star"
    out = client.predict(prompt="a red circle and a blue star", sketch=handle_file(files["sketch"]), phrases=lines, api_name="/paint_with_words", **FAST)
    assert png_meta(out[1][0])["paint"]["phrases"][0]["strength"] == 2.0


BAD = [
    ("/generate", {"prompt": ""}, "prompt"),
    ("/generate", {"prompt": "x" * 2001}, "prompt"),
    ("/generate", {"prompt": PROMPT, "steps": 0}, "steps"),
    ("/generate", {"prompt": PROMPT, "steps": 10**6}, "steps"),
    ("/generate", {"prompt": PROMPT, "guidance": 1e9}, "guidance"),  # (non-finite: gradio_client cannot send it; see test_server)
    ("/generate", {"prompt": PROMPT, "seed": -1}, "seed"),
    ("/style_transfer", {"prompt": PROMPT, "style_image": "text"}, "style_image"),
    ("/style_transfer", {"prompt": PROMPT, "style_image": "corrupt"}, "style_image"),
    ("/style_transfer", {"prompt": PROMPT, "style_image": "huge"}, "style_image"),
    ("/paint_with_words", {"prompt": PROMPT, "sketch": "sketch", "phrases": '{"#00ff00": "red circle"}'}, "sketch"),
    ("/paint_with_words", {"prompt": PROMPT, "sketch": "sketch", "phrases": '{"#d72626": "yellow square"}'}, "phrases"),
    ("/paint_with_words", {"prompt": PROMPT, "sketch": "sketch", "phrases": "{not json"}, "phrases"),
]


@pytest.mark.parametrize("endpoint,args,field", BAD, ids=[f"{b[0]}:{b[2]}:{k}" for k, b in enumerate(BAD)])
def test_bad_input_is_a_clear_error_and_the_app_stays_up(app, client, files, endpoint, args, field):
    args = {k: handle_file(files[v]) if k in ("style_image", "sketch") else v for k, v in args.items()}
    with pytest.raises(Exception) as e:
        client.predict(api_name=endpoint, **{**FAST, **args})
    assert f"{field}:" in str(e.value), str(e.value)
    assert httpx.get(f"{app.url}/health").json()["status"] == "ok"


def test_ui_helpers():
    rows = phrases_from_prompt("A red circle and two blue stars.")
    assert mapping_from_rows(rows) == {"#d72626": "red circle", "#2355d7": "blue stars"}
    rows[0][2] = 0.5
    assert mapping_from_rows(rows)["#d72626"] == "red circle@0.5"
    meta = {"experts": {"base": [{"step": 0, "sigma": 80.0, "expert": "E2_3"}, {"step": 1, "sigma": 0.5, "expert": "complement_2_2"}]}}
    assert schedule_rows(meta) == [["base", 0, 80.0, "E2_3"], ["base", 1, 0.5, "complement_2_2"]]
    assert "E2_3" in schedule_summary(meta) and "complement_2_2" in schedule_summary(meta)


def test_ui_only_mode_talks_to_a_model_server(app, files):
    ui = start_app(["--server-url", app.url])
    try:
        h = httpx.get(f"{ui.url}/health").json()
        assert h["ui_only"] and h["server"]["model"] == "ediff-tiny-random"
        assert httpx.post(f"{ui.url}/v1/generate", json={"prompt": PROMPT}).status_code in (404, 405)  # no model here
        c = Client(ui.url, verbose=False)
        out = c.predict(prompt=PROMPT, seed=9, api_name="/generate", **FAST)
        assert png_meta(out[1][0])["seed"] == 9
        phrases = json.dumps({"#d72626": "red circle"})
        out = c.predict(prompt=PROMPT, sketch=handle_file(files["sketch"]), phrases=phrases, api_name="/paint_with_words", **FAST)
        assert png_meta(out[1][0])["paint"]["phrases"][0]["phrase"] == "red circle"
        clip, t5, both, _, _ = c.predict(prompt=PROMPT, seed=2, api_name="/compare_encoders", **FAST)
        assert [png_meta(p)["encoders"] for p in (clip, t5, both)] == ["clip", "t5", "both"]
        out = c.predict(prompt=PROMPT, style_image=handle_file(files["reference"]), api_name="/style_transfer", **FAST)
        assert png_meta(out[1][0])["style_image"] == "64x64"
        with pytest.raises(Exception, match="steps"):
            c.predict(prompt=PROMPT, steps=0, api_name="/generate")
        with pytest.raises(Exception, match="phrases: phrase 'yellow square' is not in the prompt"):
            c.predict(prompt=PROMPT, sketch=handle_file(files["sketch"]), phrases='{"#d72626": "yellow square"}', api_name="/paint_with_words", **FAST)
    finally:
        ui.stop()


def test_auth_protects_the_ui_and_the_api(tiny_model):
    from app import build_app, parse_args

    server = ThreadServer(build_app(parse_args(["--model", str(tiny_model), "--auth", "alice:wonder"])))
    try:
        assert httpx.get(f"{server.url}/health").status_code == 200  # for load balancers
        assert httpx.get(f"{server.url}/v1/info").status_code == 401
        assert httpx.get(f"{server.url}/v1/info", auth=("alice", "wrong")).status_code == 401
        assert httpx.get(f"{server.url}/v1/info", auth=("alice", "wonder")).status_code == 200
        with pytest.raises(Exception):
            Client(server.url, verbose=False)
        out = Client(server.url, auth=("alice", "wonder"), verbose=False).predict(prompt=PROMPT, api_name="/generate", **FAST)
        assert png_meta(out[1][0])["prompt"] == PROMPT
    finally:
        server.stop()
        server_model = getattr(server.server.config.app, "state", None)
        if server_model is not None and hasattr(server_model, "model"):
            server_model.model.close()


def test_cancelling_a_gradio_job_stops_its_request(app, client):
    health = lambda: httpx.get(f"{app.url}/health").json()  # noqa: E731
    before = health()["scheduler"]["cancelled"]
    job = client.submit(prompt=PROMPT, steps=200, sampler="heun", num_images=8, api_name="/generate")  # long enough to still be running when cancelled
    deadline = time.monotonic() + 30
    while health()["queue_depth"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert health()["running"] == 1
    # The client cancels a job it has seen start: before that it may not know the job's event id yet.
    while job.status().code not in (Status.PROCESSING, Status.ITERATING, Status.PROGRESS) and time.monotonic() < deadline:
        time.sleep(0.05)
    job.cancel()  # Gradio closes the generator, which cancels the ticket
    while health()["queue_depth"] and time.monotonic() < deadline:
        time.sleep(0.05)
    h = health()
    assert h["queue_depth"] == 0 and h["scheduler"]["cancelled"] == before + 1, h["scheduler"]


def test_the_gradio_client_snippet_in_the_docs_works(app, tmp_path, monkeypatch):
    text = (Path(__file__).resolve().parents[1] / "docs" / "serving.md").read_text()
    snippet = text.split("## gradio_client", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(snippet.replace("http://127.0.0.1:7860/", app.url + "/"), "serving.md", "exec"), scope)
    assert png_meta(scope["painted"][1][0])["paint"]["phrases"][1]["phrase"] == "blue star"
    assert png_meta(scope["styled"][1][0])["style_image"] == "32x32"


def test_outputs_are_pruned_but_examples_stay(tmp_path):
    from demo.runner import Outputs

    out = Outputs(tmp_path)
    old = Path(out.save_image(Image.new("RGB", (8, 8)), "old.png"))
    example = Path(out.save_example(Image.new("RGB", (8, 8)), "ref.png"))
    for p in (old, example):
        os.utime(p, (0, 0))
    out.prune()
    assert not old.exists() and not old.parent.exists() and example.exists()


def test_outputs_keep_under_their_size_cap_oldest_first(tmp_path):
    from demo.runner import Outputs

    out = Outputs(tmp_path, max_bytes=0)
    saved = [Path(out.save_image(Image.new("RGB", (64, 64), (i, 0, 0)), f"{i}.png")) for i in range(4)]
    for i, p in enumerate(saved):
        os.utime(p, (1e9 + i, 1e9 + i))  # recent enough to survive the age rule, oldest first
    out.max_bytes = sum(p.stat().st_size for p in saved[2:])
    out.prune(max_age_s=1e12)
    assert [p.exists() for p in saved] == [False, False, True, True]


def test_outputs_cleanup_removes_only_what_this_process_made(tmp_path):
    from demo.runner import Outputs

    own = Outputs()
    Path(own.save_image(Image.new("RGB", (8, 8)), "a.png"))
    own.cleanup()
    assert not own.root.exists()
    keep = tmp_path / "mine.txt"
    keep.write_text("a user's file")
    users = Outputs(tmp_path)
    made = Path(users.save_image(Image.new("RGB", (8, 8)), "b.png"))
    users.cleanup()
    assert not made.exists() and keep.read_text() == "a user's file"


def test_each_app_has_its_own_gradio_upload_folder_removed_at_exit(app, tmp_path):
    """Issue #24.4: uploads land in this instance's private folder, not the machine-wide
    <tmp>/gradio, and that folder goes when the process exits."""
    src = tmp_path / "up.png"
    Image.new("RGB", (8, 8)).save(src)
    with open(src, "rb") as fh:
        r = httpx.post(f"{app.url}/gradio_api/upload", files={"files": ("up.png", fh, "image/png")}, timeout=20)
    r.raise_for_status()
    uploaded = Path(r.json()[0])
    assert uploaded.parent.parent.name.startswith("ediff-gradio-"), uploaded
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "GRADIO_TEMP_DIR"}
    code = "import app, pathlib; d = app.private_gradio_temp_dir(); pathlib.Path(d, 'x').write_text('x'); print(d)"
    folder = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1], env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(folder).name.startswith("ediff-gradio-") and not Path(folder).exists()


def _gradio_call(url: str, endpoint: str, data: list, timeout: float = 20) -> tuple[str, str]:
    """A raw Gradio REST call (POST /gradio_api/call/NAME, then its SSE stream): (last event, its data)."""
    with httpx.Client(base_url=url, timeout=timeout) as c:
        r = c.post(f"/gradio_api/call/{endpoint}", json={"data": data})
        r.raise_for_status()
        event, payload = "", ""
        with c.stream("GET", f"/gradio_api/call/{endpoint}/{r.json()['event_id']}") as s:
            for line in s.iter_lines():
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:"):
                    payload = line.split(":", 1)[1].strip()
                    if event in ("complete", "error"):
                        break
        return event, payload


def _file_data(path: str) -> dict:
    return {"path": path, "meta": {"_type": "gradio.FileData"}}


@pytest.mark.parametrize("path", ["/dev/zero", "/etc/passwd", "app.py", str(Path(__file__).resolve()), "/tmp/../etc/hostname", "/nonexistent/file.png"])
def test_a_server_path_is_never_accepted_as_an_upload(app, tmp_path, path):
    """Issue #24.1: a client-named server path (device, FIFO, file outside the upload folder) is
    refused at once, the server keeps answering, and nothing of the file lands in the cache."""
    started = time.time()
    for endpoint, data in (
        ("style_transfer", [PROMPT, _file_data(path), 1.0, "", 0, 3, 3.0, "euler", "both"]),
        ("paint_with_words", [PROMPT, _file_data(path), '{"#ff0000": "red"}', 0.4, "", 0, 3, 3.0, "euler"]),
    ):
        t0 = time.monotonic()
        event, payload = _gradio_call(app.url, endpoint, data)
        assert event == "error", (endpoint, path, event, payload[:200])
        assert time.monotonic() - t0 < 10, (endpoint, path)  # refused, not read (a /dev/zero read never ends)
        assert httpx.get(f"{app.url}/health", timeout=5).status_code == 200
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    event, _ = _gradio_call(app.url, "style_transfer", [PROMPT, _file_data(str(fifo)), 1.0, "", 0, 3, 3.0, "euler", "both"])
    assert event == "error"
    assert httpx.get(f"{app.url}/health", timeout=5).status_code == 200
    # No copy of a named file was made anywhere under the temp folder during this test (a copy
    # keeps the source's mtime, so the creation-side ctime is what dates it).
    secrets = {Path(p).resolve().read_bytes()[:64] for p in ("/etc/passwd", "/etc/hostname", __file__, "app.py") if Path(p).is_file()}
    for cached in Path(tempfile.gettempdir()).rglob("*"):
        try:
            if cached.is_file() and not cached.is_symlink() and cached.stat().st_ctime >= started - 1 and cached.stat().st_size > 0:
                assert cached.read_bytes()[:64] not in secrets, cached
        except OSError:
            continue
