"""The fast subset of the reliability suite (issue #24.6): the bad-input table, over REST and the
Gradio API, against a real ``python app.py`` (tiny model). Every case must be answered with an
error that names its field, the server must stay healthy, and every server-path attack must be
refused in under a second while /health keeps answering in under a second. The full suite
(schemathesis, load, kill -9, memory, fairness) is ``scripts/reliability.py``; its figures are in
docs/reliability.md."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import httpx
import pytest

from live_server import shared_app

from test_demo import _file_data, _gradio_call
from test_server import PROMPT, b64, corrupt_png, huge_png, png_bytes, reference, sketch

FAST = {"steps": 2, "sr_steps": 1}
SK = b64(png_bytes(sketch()))
REF = b64(png_bytes(reference()))


@pytest.fixture(scope="module")
def app(tiny_model):
    return shared_app("--model", str(tiny_model), "--max-queue", "16", "--max-running", "16", "--max-per-client", "16", "--client-budget", "1e9")


def _common(route: str, extra: dict) -> list[tuple]:
    """The fields every generation route shares, each wrong in several ways."""
    base = {"prompt": PROMPT, **extra}
    cases = [
        ({"prompt": ""}, "prompt"), ({"prompt": " \n\t"}, "prompt"), ({"prompt": "x" * 2001}, "prompt"), ({"prompt": 5}, "prompt"),
        ({"prompt": None}, "prompt"), ({"prompt": ["a"]}, "prompt"), ({"negative_prompt": "y" * 2001}, "negative_prompt"),
        ({"negative_prompt": 3}, "negative_prompt"), ({"seed": -1}, "seed"), ({"seed": 2**32}, "seed"), ({"seed": "7"}, "seed"),
        ({"seed": 1.5}, "seed"), ({"steps": 0}, "steps"), ({"steps": 201}, "steps"), ({"steps": "5"}, "steps"), ({"steps": True}, "steps"),
        ({"sr_steps": 0}, "sr_steps"), ({"sr_steps": 10**9}, "sr_steps"), ({"guidance": -1}, "guidance"), ({"guidance": 51}, "guidance"),
        ({"guidance": "high"}, "guidance"), ({"sr_guidance": -0.5}, "sr_guidance"), ({"sampler": "ddim"}, "sampler"), ({"sampler": 3}, "sampler"),
        ({"num_images": 0}, "num_images"), ({"num_images": 9}, "num_images"), ({"dynamic_threshold": "yes"}, "dynamic_threshold"),
        ({"dynamic_threshold": 1}, "dynamic_threshold"), ({"stream": "true"}, "stream"), ({"unknown_field": 1}, "unknown_field"),
    ]
    if route != "/v1/compare_encoders":
        cases.append(({"encoders": "bert"}, "encoders"))
    return [(route, {**base, **change}, field) for change, field in cases]


TABLE = [
    *_common("/v1/generate", {}),
    *_common("/v1/compare_encoders", {}),
    ("/v1/compare_encoders", {"prompt": PROMPT, "modes": []}, "modes"),
    ("/v1/compare_encoders", {"prompt": PROMPT, "modes": ["bert"]}, "modes"),
    ("/v1/compare_encoders", {"prompt": PROMPT, "modes": ["t5", "t5", "t5", "t5"]}, "modes"),
    *_common("/v1/style_transfer", {"style_image": REF}),
    ("/v1/style_transfer", {"prompt": PROMPT}, "style_image"),
    ("/v1/style_transfer", {"prompt": PROMPT, "style_image": ""}, "style_image"),
    ("/v1/style_transfer", {"prompt": PROMPT, "style_image": "%%%"}, "style_image"),
    ("/v1/style_transfer", {"prompt": PROMPT, "style_image": b64(b"plain text")}, "style_image"),
    ("/v1/style_transfer", {"prompt": PROMPT, "style_image": b64(corrupt_png())}, "style_image"),
    ("/v1/style_transfer", {"prompt": PROMPT, "style_image": b64(huge_png())}, "style_image"),
    ("/v1/style_transfer", {"prompt": PROMPT, "style_image": "A" * (12 * 2**20)}, "body"),
    ("/v1/style_transfer", {"prompt": PROMPT, "style_image": REF, "style_strength": -1}, "style_strength"),
    ("/v1/style_transfer", {"prompt": PROMPT, "style_image": REF, "style_strength": 11}, "style_strength"),
    *_common("/v1/paint_with_words", {"sketch": SK, "phrases": {"#d72626": "red circle"}}),
    ("/v1/paint_with_words", {"prompt": PROMPT, "phrases": {"#d72626": "red circle"}}, "sketch"),
    ("/v1/paint_with_words", {"prompt": PROMPT, "sketch": SK}, "phrases"),
    ("/v1/paint_with_words", {"prompt": PROMPT, "sketch": SK, "phrases": {}}, "phrases"),
    ("/v1/paint_with_words", {"prompt": PROMPT, "sketch": SK, "phrases": {"#zzzzzz": "red circle"}}, "phrases"),
    ("/v1/paint_with_words", {"prompt": PROMPT, "sketch": SK, "phrases": {"rgb(999,0,0)": "red circle"}}, "phrases"),
    ("/v1/paint_with_words", {"prompt": PROMPT, "sketch": SK, "phrases": ["no equals sign"]}, "phrases"),
    ("/v1/paint_with_words", {"prompt": PROMPT, "sketch": SK, "phrases": {"#d72626": "yellow square"}}, "phrases"),
    ("/v1/paint_with_words", {"prompt": PROMPT, "sketch": SK, "phrases": {"#d72626": "red circle@x"}}, "phrases"),
    ("/v1/paint_with_words", {"prompt": PROMPT, "sketch": SK, "phrases": {"#d72626": "red circle@99"}}, "phrases"),
    ("/v1/paint_with_words", {"prompt": PROMPT, "sketch": SK, "phrases": {f"#{k:06x}": "red circle" for k in range(17)}}, "phrases"),
    ("/v1/paint_with_words", {"prompt": PROMPT, "sketch": SK, "phrases": {"#d72626": "r" * 201}}, "phrases"),
    ("/v1/paint_with_words", {"prompt": PROMPT, "sketch": SK, "phrases": {"#00ff00": "red circle"}}, "sketch"),
    ("/v1/paint_with_words", {"prompt": PROMPT, "sketch": b64(corrupt_png()), "phrases": {"#d72626": "red circle"}}, "sketch"),
    ("/v1/paint_with_words", {"prompt": PROMPT, "sketch": SK, "phrases": {"#d72626": "red circle"}, "pww_weight": -1}, "pww_weight"),
    ("/v1/paint_with_words", {"prompt": PROMPT, "sketch": SK, "phrases": {"#d72626": "red circle"}, "pww_weight": 11}, "pww_weight"),
]


@pytest.mark.parametrize("route,body,field", TABLE, ids=[f"{r}:{f}:{k}" for k, (r, _, f) in enumerate(TABLE)])
def test_rest_bad_input_table(app, route, body, field):
    with httpx.Client(base_url=app.url, timeout=60) as c:
        r = c.post(route, json={**FAST, **body} if "steps" not in body else body)
        assert r.status_code in (413, 422), (r.status_code, r.text[:300])
        err = r.json()
        assert err["field"].split(".")[0] == field and field in err["message"], err
        assert c.get("/health", timeout=1).status_code == 200


def test_the_table_is_at_least_a_hundred_cases():
    assert len(TABLE) + len(GRADIO) + len(PATHS) * 2 >= 100


GRADIO = [
    ("generate", dict(prompt=""), "prompt"), ("generate", dict(prompt="x" * 2001), "prompt"), ("generate", dict(steps=0), "steps"),
    ("generate", dict(steps=201), "steps"), ("generate", dict(steps="5"), "steps"), ("generate", dict(guidance=99.0), "guidance"),
    ("generate", dict(seed=-1), "seed"), ("generate", dict(seed=2**33), "seed"), ("generate", dict(sampler="ddim"), "sampler"),
    ("generate", dict(encoders="bert"), "encoders"), ("generate", dict(num_images=9), "num_images"),
    ("compare_encoders", dict(prompt=""), "prompt"), ("compare_encoders", dict(steps=0), "steps"), ("compare_encoders", dict(sampler="ddim"), "sampler"),
    ("style_transfer", dict(style_image=None), "style_image"), ("style_transfer", dict(style_strength=4.0), "style_strength"),
    ("paint_with_words", dict(phrases="{not json"), "phrases"), ("paint_with_words", dict(phrases='{"#d72626": "yellow square"}'), "phrases"),
    ("paint_with_words", dict(phrases=json.dumps({f"#{k:06x}": "red circle" for k in range(40)})), "phrases"), ("paint_with_words", dict(pww_weight=5.0), "pww_weight"),
]


@pytest.fixture(scope="module")
def client(app, tmp_path_factory):
    from gradio_client import Client

    return Client(app.url, verbose=False)


@pytest.fixture(scope="module")
def upload_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("rel")
    reference().save(d / "ref.png")
    sketch(size=128).save(d / "sketch.png")
    return d


@pytest.mark.parametrize("endpoint,args,field", GRADIO, ids=[f"{e}:{f}:{k}" for k, (e, _, f) in enumerate(GRADIO)])
def test_gradio_bad_input_table(app, client, upload_files, endpoint, args, field):
    from gradio_client import handle_file

    defaults = {"prompt": PROMPT, **FAST}
    if endpoint == "compare_encoders":
        defaults.pop("sr_steps")
    if endpoint == "style_transfer":
        defaults["style_image"] = handle_file(str(upload_files / "ref.png"))
    if endpoint == "paint_with_words":
        defaults.update(sketch=handle_file(str(upload_files / "sketch.png")), phrases='{"#d72626": "red circle"}')
    defaults.pop("sr_steps", None)
    with pytest.raises(Exception) as e:
        client.predict(api_name=f"/{endpoint}", **{**defaults, **args})
    assert f"{field}:" in str(e.value), str(e.value)
    assert httpx.get(f"{app.url}/health", timeout=1).status_code == 200


PATHS = ["/dev/zero", "/dev/urandom", "/proc/self/environ", "/etc/passwd", "/etc/shadow", "app.py", "../../../../etc/hostname", "/tmp/../etc/hostname",
         "file:///etc/passwd", "/nonexistent/x.png", "", "~/.bashrc", "SYMLINK", "FIFO", "UPLOAD/../../etc/passwd"]


def _upload_dir(app) -> Path:
    """This app's own upload folder, from a real upload."""
    with httpx.Client(base_url=app.url, timeout=30) as c:
        r = c.post("/gradio_api/upload", files={"files": ("s.png", png_bytes(sketch()), "image/png")})
        r.raise_for_status()
        return Path(r.json()[0]).parent.parent


@pytest.mark.parametrize("path", PATHS)
def test_every_server_path_attack_is_refused_within_a_second(app, tmp_path, path):
    folder = _upload_dir(app)
    if path == "SYMLINK":  # a link inside the upload folder that points out of it
        link = folder / f"link-{os.getpid()}-{time.monotonic_ns()}.png"
        link.symlink_to("/etc/passwd")
        path = str(link)
    elif path == "FIFO":
        path = str(tmp_path / "fifo.png")
        os.mkfifo(path)
    elif path.startswith("UPLOAD"):
        path = str(folder) + path.removeprefix("UPLOAD")
    messages = set()
    for endpoint, data in (
        ("style_transfer", [PROMPT, _file_data(path), 1.0, "", 0, 2, 3.0, "euler", "both"]),
        ("paint_with_words", [PROMPT, _file_data(path), '{"#d72626": "red circle"}', 0.4, "", 0, 2, 3.0, "euler"]),
    ):
        t0 = time.monotonic()
        event, payload = _gradio_call(app.url, endpoint, data, timeout=10)
        took = time.monotonic() - t0
        assert event == "error", (endpoint, path, payload[:200])
        assert took < 1.0, (endpoint, path, took)
        t0 = time.monotonic()
        assert httpx.get(f"{app.url}/health", timeout=1).status_code == 200
        assert time.monotonic() - t0 < 1.0
        messages.add((endpoint, payload))
    for endpoint, payload in messages:  # one text for every refused path: the field, no echo of the path
        field = "style_image" if endpoint == "style_transfer" else "sketch"
        text = json.loads(payload)["error"]
        assert text == f"{field}: must be a file uploaded to this server with the request; upload the image" or (path == "" and text.startswith(f"{field}:")), (path, text)


def test_a_wrong_file_type_and_too_few_inputs_name_the_parameters(app, client, tmp_path):
    from gradio_client import handle_file

    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    with pytest.raises(Exception) as e:
        client.predict(prompt=PROMPT, style_image=handle_file(str(notes)), api_name="/style_transfer", steps=2)
    assert "style_image:" in str(e.value), str(e.value)
    event, payload = _gradio_call(app.url, "generate", [PROMPT, "", 0])  # 3 of 9 inputs
    text = json.loads(payload)["error"]
    assert event == "error" and text.startswith("generate: needs 9 inputs (prompt, negative_prompt, seed, steps") and "got 3" in text, text
    assert "gradio.components" not in text and "<" not in text
