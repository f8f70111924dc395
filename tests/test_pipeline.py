"""The cascade end to end on a tiny random model saved in the real formats."""

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ediff_core.pipeline import EDiffPipeline, GenerationResult, Progress
from ediff_core.core.request import GenerationRequest, RequestError

ROOT = Path(__file__).resolve().parents[1]


def _arr(img):
    return np.asarray(img).astype(np.int16)


def test_save_load_round_trip(tiny_model, tiny_pipe, tmp_path):
    info = tiny_pipe.info()
    assert [e["name"] for e in info["experts"]] == ["E2_0", "complement_2_2", "E2_3"]
    assert info["resolutions"] == [16, 32]
    # Re-save what was loaded and load it again: identical outputs.
    copy = tmp_path / "copy"
    tiny_pipe.save_pretrained(copy, {"t5": str(tiny_model / "t5"), "clip": str(tiny_model / "clip")})
    again = EDiffPipeline.from_pretrained(copy)
    req = GenerationRequest("a red circle and two blue stars", seed=3)
    a, b = tiny_pipe(req), again(req)
    assert np.array_equal(_arr(a.images[0]), _arr(b.images[0]))


def test_intervals_tile_zero_to_infinity(tiny_pipe):
    ex = tiny_pipe.info()["experts"]
    assert ex[0]["sigma_min"] == 0 and ex[-1]["sigma_max"] is None
    assert all(a["sigma_max"] == b["sigma_min"] for a, b in zip(ex, ex[1:]))


def test_generation_reports_experts_by_sigma_and_progress(tiny_pipe):
    events = list(tiny_pipe.generate(GenerationRequest("a red circle", seed=1, steps=12, sr_steps=3, sampler="heun")))
    progress = [e for e in events if isinstance(e, Progress)]
    result = events[-1]
    assert isinstance(result, GenerationResult)
    assert len(progress) == progress[-1].total == (2 * 12 - 1) + (2 * 3 - 1)
    specs = tiny_pipe.base.ensemble.specs
    for p in progress:
        if p.stage == "base":
            owner = next(s for s in specs if s.interval.lo <= p.sigma < s.interval.hi)
            assert p.expert == owner.name
    assert result.images[0].size == (32, 32) and result.stage_images["base"][0].size == (16, 16)
    meta = result.metadata[0]
    assert meta["seed"] == 1 and meta["sampler"] == "heun" and meta["steps"] == 12
    assert {e["expert"] for e in meta["experts"]["base"]} == {s.name for s in specs}


def test_batch_of_n_equals_n_runs_of_one(tiny_pipe):
    batch = tiny_pipe(GenerationRequest("two green hearts", seed=10, num_images=3))
    for k in range(3):
        one = tiny_pipe(GenerationRequest("two green hearts", seed=10 + k))
        assert batch.metadata[k]["seed"] == 10 + k
        # Same noise and conditioning; only float rounding of batched kernels may differ.
        assert np.abs(_arr(batch.images[k]) - _arr(one.images[0])).max() <= 1


def test_same_seed_same_image_different_seed_different(tiny_pipe):
    a = tiny_pipe(GenerationRequest("a star", seed=4))
    b = tiny_pipe(GenerationRequest("a star", seed=4))
    c = tiny_pipe(GenerationRequest("a star", seed=5))
    assert np.array_equal(_arr(a.images[0]), _arr(b.images[0]))
    assert not np.array_equal(_arr(a.images[0]), _arr(c.images[0]))


def test_encoder_modes_change_the_output(tiny_pipe):
    outs = {m: _arr(tiny_pipe(GenerationRequest("a red circle", seed=2, encoders=m)).images[0]) for m in ("both", "t5", "clip")}
    assert not np.array_equal(outs["both"], outs["t5"]) and not np.array_equal(outs["both"], outs["clip"])


@pytest.mark.parametrize(
    "kwargs,field,message",
    [
        ({"encoders": "bert"}, "encoders", "must be one of both, t5, clip"),
        ({"steps": 0}, "steps", "from 1 to 200"),
        ({"steps": 10**6}, "steps", "from 1 to 200"),
        ({"guidance": float("nan")}, "guidance", "finite"),
        ({"guidance": float("inf")}, "guidance", "finite"),
        ({"prompt": "   "}, "prompt", "non-empty"),
        ({"num_images": 0}, "num_images", "from 1 to 8"),
        ({"sampler": "ddim"}, "sampler", "euler, heun, dpmpp_2m"),
        ({"seed": -1}, "seed", "from 0"),
    ],
)
def test_bad_requests_name_the_field(tiny_pipe, kwargs, field, message):
    req = GenerationRequest(**{"prompt": "a red circle", **kwargs})
    with pytest.raises(RequestError, match=message) as e:
        tiny_pipe(req)
    assert e.value.field == field and str(e.value).startswith(f"{field}:")


def test_missing_and_incomplete_model_folders(tiny_model, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        EDiffPipeline.from_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no model_index.json"):
        EDiffPipeline.from_pretrained(tmp_path / "empty")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    for f in (broken / "base" / "E2_3").glob("*.safetensors"):
        f.unlink()
    with pytest.raises(FileNotFoundError, match="expert 'E2_3' of stage 'base' needs config.json and safetensors"):
        EDiffPipeline.from_pretrained(broken)
    idx = json.loads((tiny_model / "model_index.json").read_text())
    idx["base"]["experts"][1]["sigma_min"] = 0.2  # leave a gap
    gap = tmp_path / "gap"
    shutil.copytree(tiny_model, gap)
    (gap / "model_index.json").write_text(json.dumps(idx))
    with pytest.raises(ValueError, match="gap or overlap"):
        EDiffPipeline.from_pretrained(gap)


def test_hub_id_offline_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="could not be fetched from the Hub"):
        EDiffPipeline.from_pretrained("nvidia/ediff-i-does-not-exist")


def _cli(*args, check=True):
    r = subprocess.run([sys.executable, "-m", "ediff_core", *args], cwd=ROOT, capture_output=True, text=True, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    if check:
        assert r.returncode == 0, r.stderr
    return r


def test_cli_generates_through_the_cascade_with_metadata(tiny_model, tmp_path):
    r = _cli("generate", "--model", str(tiny_model), "--prompt", "a red circle", "--seed", "7", "--out", str(tmp_path / "img.png"), "--json")
    summary = json.loads(r.stdout)
    img = Image.open(summary["outputs"][0])
    assert img.size == (32, 32)
    assert "Seed: 7" in img.text["parameters"] and img.text["parameters"].startswith("a red circle")
    meta = json.loads(img.text["ediff"])
    assert meta["seed"] == 7 and meta["experts"]["base"][0]["expert"] == "E2_3"
    assert summary["experts"]["base"] and "total" in summary["timings"]
    assert "timings" not in meta  # timings: in the JSON summary only, so PNGs are reproducible


def test_cli_prompts_file_and_info(tiny_model, tmp_path):
    jl = tmp_path / "reqs.jsonl"
    jl.write_text("\n".join(json.dumps(d) for d in [{"prompt": "a red circle", "seed": 1, "out": str(tmp_path / "a")}, {"prompt": "a blue star", "seed": 2, "encoders": "t5", "out": str(tmp_path / "b")}]))
    r = _cli("generate", "--model", str(tiny_model), "--prompts-file", str(jl), "--json")
    out = json.loads(r.stdout)
    assert len(out) == 2 and out[1]["settings"]["encoders"] == "t5"
    info = json.loads(_cli("info", "--model", str(tiny_model), "--json").stdout)
    assert [e["name"] for e in info["experts"]] == ["E2_0", "complement_2_2", "E2_3"]
    assert all(e["parameters"] > 0 for e in info["experts"])


def test_eval_cli_sampling_flags_reach_every_generation(tiny_model, tmp_path, capsys):
    """``eval --guidance/--steps/--style-strength/--pww-weight/--encoders``: the images change with each, the reports record it."""
    from ediff_core.tools.cli import main

    common = ["eval", "--model", str(tiny_model), "--device", "cpu", "--n", "1", "--steps", "2"]
    for g in ("1", "6"):
        assert main([*common, "--suite", "alignment", "--guidance", g, "--out", str(tmp_path / g)]) == 0
        report = json.loads((tmp_path / g / "alignment.json").read_text())
        assert report["settings"]["guidance"] == float(g) and report["settings"]["steps"] == 2
    # Saved as KIND_III_{ok,no}.png: the verdicts may differ; the images must differ somewhere.
    images = [{p.name.rsplit("_", 1)[0]: np.asarray(Image.open(p)) for p in (tmp_path / g / "images").glob("*.png")} for g in ("1", "6")]
    assert images[0] and images[0].keys() == images[1].keys()
    assert any(not np.array_equal(images[0][k], images[1][k]) for k in images[0])
    # --encoders reaches the alignment generations too (§5.2): T5 alone changes the images of guidance 6.
    assert main([*common, "--suite", "alignment", "--guidance", "6", "--encoders", "t5", "--out", str(tmp_path / "t5")]) == 0
    assert json.loads((tmp_path / "t5" / "alignment.json").read_text())["settings"]["encoders"] == "t5"
    t5_only = {p.name.rsplit("_", 1)[0]: np.asarray(Image.open(p)) for p in (tmp_path / "t5" / "images").glob("*.png")}
    assert t5_only.keys() == images[1].keys() and any(not np.array_equal(t5_only[k], images[1][k]) for k in t5_only)
    assert main([*common, "--suite", "style", "--guidance", "2", "--style-strength", "2.5", "--out", str(tmp_path / "s")]) == 0
    assert json.loads((tmp_path / "s" / "style.json").read_text())["settings"] == {"steps": 2, "guidance": 2.0, "style_strength": 2.5}
    # --pww-weight reaches the painted generations: w′ = 0 is the unmodulated model, so its images equal the run without paint.
    for w in ("0", "8"):
        assert main([*common, "--suite", "paint", "--pww-weight", w, "--out", str(tmp_path / f"p{w}")]) == 0
    assert json.loads((tmp_path / "p8" / "paint.json").read_text())["settings"] == {"steps": 2, "pww_weight": 8.0}
    painted = {w: {p.name.rsplit("_", 1)[0]: np.asarray(Image.open(p)) for p in (tmp_path / f"p{w}" / "images").glob("*_000_*.png")} for w in ("0", "8")}
    assert painted["0"].keys() == painted["8"].keys() == {"pww_000", "plain_000"}
    assert np.array_equal(painted["0"]["pww_000"], painted["0"]["plain_000"])  # w′ = 0: the stock attention
    assert np.array_equal(painted["8"]["plain_000"], painted["0"]["plain_000"])
    assert not np.array_equal(painted["8"]["pww_000"], painted["0"]["pww_000"])
    assert (tmp_path / "p8" / "images" / "sketch_000.png").is_file()
    capsys.readouterr()
    for bad, says in ((["--guidance", "-1"], "guidance: must be"), (["--style-strength", "11"], "style_strength: must be"), (["--pww-weight", "-1"], "pww_weight: must be"), (["--encoders", "xl"], "encoders: must be one of"), (["--suite", "fid"], "suite must be one of alignment, paint, style, paper")):
        assert main([*common, *bad]) == 2
        assert says in capsys.readouterr().err


def test_cli_bad_input_exits_with_a_named_field(tiny_model):
    r = _cli("generate", "--model", str(tiny_model), "--prompt", "a red circle", "--steps", "0", check=False)
    assert r.returncode == 2 and "steps: must be from 1 to 200; got 0" in r.stderr
    r = _cli("generate", "--model", str(tiny_model), "--prompt", "x", "--guidance", "nan", check=False)
    assert r.returncode == 2 and "guidance: must be a finite number" in r.stderr
