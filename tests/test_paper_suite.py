"""The paper suite (``eval --suite paper``): Figs. 3, 4, 7, 8/18 measured end to end on the tiny
random model, and the metrics behind it (FID, KID, CLIP score, verdicts)."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from ediff_core.data.shapes_world import render
from ediff_core.tools.eval import metrics as M
from ediff_core.tools.eval.paper import FINDINGS, TRAIN_BASELINE, baseline_folder, load_variant
from ediff_core.tools.eval.paper_suite import run_paper_suite

VERDICTS = {"yes", "partly", "no", "inconclusive"}


@pytest.fixture(scope="module")
def model_with_baseline(tiny_model, tmp_path_factory):
    """The tiny model folder plus a ``base/baseline`` (one of its experts saved there)."""
    folder = tmp_path_factory.mktemp("paper") / "model"
    shutil.copytree(tiny_model, folder)
    expert = sorted(p for p in (folder / "base").iterdir() if p.is_dir())[0]
    shutil.copytree(expert, folder / "base" / "baseline")
    return folder


def test_quick_suite_writes_every_finding_plot_and_page(model_with_baseline, tmp_path):
    from ediff_core.pipeline import EDiffPipeline

    pipe = EDiffPipeline.from_pretrained(model_with_baseline)
    out = tmp_path / "docs" / "results"
    report = run_paper_suite(pipe, out, quick=True, model_folder=model_with_baseline, log=lambda m: None)

    saved = json.loads((out / "results.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert list(saved["findings"]) == list(FINDINGS)
    for key, f in saved["findings"].items():
        assert f["status"] == "ok", (key, f["status"], f.get("traceback"))
        assert f["reproduces"] in VERDICTS and f["why"] and f["paper"]
        assert f["samples"]["seeds"][0] == 0
        assert f["plots"] and all((out / p).is_file() for p in f["plots"])
    sweep = saved["findings"]["ensemble_vs_baseline"]
    assert {"ensemble", "baseline", "real renders"} <= {row[1] for row in sweep["table"]["rows"]}
    assert set(sweep["numbers"]["guidances"]) == {1.0, pipe.defaults["guidance"]}
    assert saved["fid"]["reference"]["images"] == 200 and (out / saved["fid"]["reference"]["cache"]).is_file()
    assert saved["wall_clock_s"] > 0 and saved["images_generated"] > 0

    page = (tmp_path / "docs" / "results.md").read_text()
    assert saved["command"] in page and "wall-clock" in page
    assert saved["training_objective"]["paper_faithful"] is True and "the paper's training objective" in page
    for f in saved["findings"].values():
        assert f["title"] in page and f["paper"] in page
        assert all(f"(results/{p})" in page for p in f["plots"])


def test_baseline_is_found_in_the_model_folder_or_its_train_sibling(tiny_pipe, tiny_model, tmp_path):
    # checkpoints/ediff-mini keeps its 40 MB budget; the baseline lives in checkpoints/ediff-mini-train.
    assert baseline_folder(tiny_pipe, tiny_model) is None
    model = tmp_path / "m"
    shutil.copytree(tiny_model, model)
    expert = sorted(p for p in (model / "base").iterdir() if p.is_dir())[0]
    shutil.copytree(expert, tmp_path / "m-train" / "base" / "baseline")
    assert baseline_folder(tiny_pipe, model) == tmp_path / "m-train"
    shutil.copytree(expert, model / "base" / "baseline")
    assert baseline_folder(tiny_pipe, model) == model


def test_baseline_missing_is_recorded_with_the_training_command(tiny_pipe, tiny_model, tmp_path):
    with pytest.raises(FileNotFoundError, match="not trained"):
        load_variant(tiny_pipe, tiny_model, "baseline")
    report = run_paper_suite(tiny_pipe, tmp_path / "r", quick=True, model_folder=tiny_model, only=("ensemble_vs_baseline",), log=lambda m: None)
    f = report["findings"]["ensemble_vs_baseline"]
    assert f["status"] == "not run: baseline not trained" and f["command"] == TRAIN_BASELINE
    assert TRAIN_BASELINE in (tmp_path / "r.md").read_text()


def test_fid_is_zero_against_itself_and_grows_with_the_shift():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(2000, 16))
    ref = M.FeatureStats.of(feats)
    assert M.fid(feats, ref) == pytest.approx(0.0, abs=1e-6)
    near = M.fid(rng.normal(size=(2000, 16)), ref)
    shifted = M.fid(rng.normal(size=(2000, 16)) + 1.0, ref)
    wide = M.fid(2 * rng.normal(size=(2000, 16)), ref)
    assert near < 0.1 < wide and shifted == pytest.approx(16, rel=0.1)
    for x in (feats[:10], rng.normal(size=(40, 16)) + 0.5):  # singular and regular covariances
        assert M.FastFID(ref)(x) == pytest.approx(M.fid(x, ref), rel=1e-6, abs=1e-6)


def test_kid_is_unbiased_near_zero_and_large_for_other_distributions():
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(500, 16))
    same = [M.kid(rng.normal(size=(50, 16)), ref) for _ in range(20)]
    other = M.kid(rng.normal(size=(50, 16)) + 1.0, ref)
    assert abs(np.mean(same)) < 0.1 * other


def test_real_renders_are_closer_to_the_reference_than_noise(tiny_pipe, tmp_path):
    enc = tiny_pipe.encoders.clip_image
    ref = M.reference(enc, 300, 32, tmp_path, log=lambda m: None)
    assert M.reference(enc, 300, 32, tmp_path).stats.mu == pytest.approx(ref.stats.mu)  # the cached .npz
    scenes, _ = M.reference_scenes(40, 950_000)
    real = M.image_features(enc, [render(s, 32) for s in scenes])
    noise = M.image_features(enc, [Image.fromarray(np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8)) for i in range(40)])
    assert M.fid(real, ref.stats) < M.fid(noise, ref.stats)
    assert M.kid(real, ref.kid_feats) < M.kid(noise, ref.kid_feats)
    assert M.clean_pixel_share(render(scenes[0], 64)) > 0.9 > M.clean_pixel_share(Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)))


def test_clip_score_range(tiny_pipe):
    scenes, _ = M.reference_scenes(4, 950_000)
    img = M.image_features(tiny_pipe.encoders.clip_image, [render(s, 32) for s in scenes])
    txt = M.text_features(tiny_pipe.encoders.clip_text, ["a red circle", "two blue stars", "a green heart at night", "a pink square"])
    scores = M.clip_scores(img, txt)
    assert scores.shape == (4,) and np.all((scores >= 0) & (scores <= 100))
    assert M.clip_scores(img, img * 3) == pytest.approx(100.0)  # same direction, any scale
    assert M.clip_scores(img, -img) == pytest.approx(0.0)  # opposite: clipped at 0


def test_verdict_helpers():
    assert M.compare(0.5, 0.1) == "better" and M.compare(-0.5, 0.1) == "worse" and M.compare(0.1, 0.1) == "tie"
    assert M.compare(0.01, 0.0, tol=0.02) == "tie"
    assert M.overall(["yes", "yes"]) == "yes" and M.overall(["yes", "no"]) == "partly"
    assert M.overall(["no", "inconclusive"]) == "no" and M.overall(["inconclusive"]) == "inconclusive"


def test_the_report_states_whether_the_measured_model_was_trained_with_grounding(model_with_baseline, tmp_path):
    from ediff_core.tools.eval.paper import training_objective
    from ediff_core.tools.eval.paper_report import objective_line

    folder = tmp_path / "grounded"
    shutil.copytree(model_with_baseline, folder)
    index = json.loads((folder / "model_index.json").read_text())
    first = index["base"]["experts"][0]
    (folder / first["path"] / "training.json").write_text(json.dumps({"step": 5, "config": {"grounding": 0.1}}))
    objective = training_objective(folder)
    assert objective["paper_faithful"] is False and objective["grounding"][first["name"]] == 0.1
    assert set(objective["grounding"]) == {e["name"] for e in index["base"]["experts"]}
    line = objective_line(objective)[0]
    assert "with token grounding" in line and f"{first['name']} W = 0.1" in line and "--grounding 0" in line
    assert training_objective(model_with_baseline)["paper_faithful"] is True
