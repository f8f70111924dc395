"""Real training steps on tiny models: each stage lowers the loss; runs resume."""

import csv
import json
import math

import pytest
import torch

from ediff_core.core.conditioning import drop_embeddings
from ediff_core.core.experts import Interval, node
from ediff_core.core.loss import EDMLoss
from ediff_core.core.networks import build_unet, denoiser
from ediff_core.tools.precision import precision_context
from ediff_core.tools.training import PRESETS, ShapesStream, _sr_inputs, baseline_job, expert_jobs, run, write_model_index


@pytest.fixture(scope="module")
def batch(tiny_pipe):
    stream = iter(ShapesStream(PRESETS["tiny"], seed=0))
    items = [next(stream) for _ in range(8)]
    b = {k: torch.stack([it[k] for it in items]) for k in ("image", "base", "degraded")}
    b["caption"] = [it["caption"] for it in items]
    return b


def _fixed_loss(D, x0, cond, loss_fn):
    return loss_fn(D, x0, cond, torch.Generator().manual_seed(123)).mean()


@pytest.fixture
def out(tiny_model, tmp_path):
    """A run folder holding the tiny model's encoders, as `train --stage base` expects."""
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_model / "t5", run_dir / "t5")
    shutil.copytree(tiny_model / "clip", run_dir / "clip")
    return run_dir


@pytest.mark.parametrize("stage", ["base", "expert", "sr"])
def test_training_steps_lower_the_loss(tiny_pipe, batch, stage):
    torch.manual_seed(0)
    enc = tiny_pipe.encoders
    cond = enc.encode(batch["caption"], (batch["image"] + 1) / 2)
    sr = stage == "sr"
    net = build_unet("tiny", 32 if sr else 32, enc.dims, super_resolution=sr)
    interval = node(2, 3) if stage == "expert" else Interval(0.0, math.inf)
    loss_fn = EDMLoss(interval=interval.as_loss_interval())
    x0 = batch["base"]
    if sr:
        cfg = PRESETS["tiny"]
        x0, cond = _sr_inputs(batch, cond, cfg, torch.Generator().manual_seed(5))
    D = denoiser(net)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3)
    before = _fixed_loss(D, x0, cond, loss_fn).item()
    for i in range(25):
        loss = loss_fn(D, x0, drop_embeddings(cond, generator=torch.Generator().manual_seed(i)), torch.Generator().manual_seed(i)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = _fixed_loss(D, x0, cond, loss_fn).item()
    assert after < 0.8 * before, (before, after)


def test_bf16_training_steps_lower_the_loss_with_fp32_master_weights(tiny_pipe, batch):
    torch.manual_seed(0)
    enc = tiny_pipe.encoders
    cond = enc.encode(batch["caption"], (batch["image"] + 1) / 2)
    net = build_unet("tiny", 32, enc.dims)
    loss_fn, D = EDMLoss(), denoiser(net)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3)
    before = _fixed_loss(D, batch["base"], cond, loss_fn).item()
    for i in range(25):
        with precision_context("bf16", "cpu"):
            loss = loss_fn(D, batch["base"], drop_embeddings(cond, generator=torch.Generator().manual_seed(i)), torch.Generator().manual_seed(i)).mean()
        assert loss.dtype == torch.float32  # λ(σ)·mean, computed outside the autocast matmuls
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in net.parameters())
    after = _fixed_loss(D, batch["base"], cond, loss_fn).item()
    assert after < 0.8 * before, (before, after)
    with precision_context("bf16", "cpu"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16"):
        precision_context("fp16", "cpu")


def test_train_cli_precision_is_recorded(out, capsys):
    from ediff_core.tools.cli import main

    assert main(["train", "--preset", "tiny", "--stage", "base", "--out", str(out), "--precision", "bf16"]) == 0
    assert json.loads((out / "base" / "shared" / "training.json").read_text())["config"]["precision"] == "bf16"
    with pytest.raises(SystemExit):
        main(["train", "--preset", "tiny", "--stage", "base", "--out", str(out), "--precision", "fp16"])
    assert "invalid choice: 'fp16'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16; got 'int8'"):
        run("tiny", "base", out, overrides={"precision": "int8"})


def test_run_all_stages_exports_a_loadable_model_and_resumes(out):
    from ediff_core.pipeline import EDiffPipeline
    from ediff_core.core.request import GenerationRequest

    logs = []
    run("tiny", "base", out, log=logs.append)
    idx = json.loads((out / "model_index.json").read_text())
    assert [e["name"] for e in idx["base"]["experts"]] == ["shared"]
    run("tiny", "experts", out, log=logs.append)
    run("tiny", "sr", out, log=logs.append)
    idx = json.loads((out / "model_index.json").read_text())
    assert len(idx["base"]["experts"]) == 3 and idx["super_resolution"][0]["name"] == "sr64"
    for job in ("base/shared", "base/baseline", "sr64/single"):
        rows = list(csv.reader(open(out / "_train" / job / "loss.csv")))
        assert rows[0] == ["step", "loss", "lr", "seconds"] and len(rows) > 1
    pipe = EDiffPipeline.from_pretrained(out)
    img = pipe(GenerationRequest("a red circle", steps=3, sr_steps=2)).images[0]
    assert img.size == (64, 64)
    # Resume: more steps continue from the saved step; the same target is a no-op.
    run("tiny", "base", out, resume=True, overrides={"base_steps": 5}, log=logs.append)
    rows = list(csv.reader(open(out / "_train" / "base" / "shared" / "loss.csv")))
    assert [int(r[0]) for r in rows[1:]] == [1, 2, 3, 4, 5]
    run("tiny", "base", out, resume=True, overrides={"base_steps": 5}, log=logs.append)
    assert any("already at step 5" in m for m in logs)
    assert json.loads((out / "base" / "shared" / "training.json").read_text())["step"] == 5


def test_train_cli_dropout_override_reaches_the_job_record(out, capsys):
    from ediff_core.tools.cli import main

    assert main(["train", "--preset", "tiny", "--stage", "base", "--out", str(out), "--dropout", "clip_text=0.5"]) == 0
    rates = json.loads((out / "base" / "shared" / "training.json").read_text())["config"]["dropout"]
    assert rates == {"clip_text": 0.5, "t5": 0.25, "clip_image": 0.9}
    for bad, says in (("clip=0.5", "one of clip_text, t5, clip_image"), ("t5=1.5", "t5 needs a rate in [0, 1]"), ("t5=x", "t5 needs a rate")):
        assert main(["train", "--preset", "tiny", "--stage", "base", "--out", str(out), "--dropout", bad]) == 2
        assert says in capsys.readouterr().err


def test_train_device_flag_is_recorded_and_a_missing_cuda_is_refused_by_name(out, capsys):
    from ediff_core.tools.cli import main

    assert main(["train", "--preset", "tiny", "--stage", "base", "--out", str(out), "--device", "cpu", "--data-workers", "0"]) == 0
    record = json.loads((out / "base" / "shared" / "training.json").read_text())
    assert record["device"] == "cpu" and record["config"]["data_workers"] == 0
    if not torch.cuda.is_available():
        assert main(["train", "--preset", "tiny", "--stage", "base", "--out", str(out), "--device", "cuda"]) == 2
        err = capsys.readouterr().err
        assert "device" in err and "no CUDA device" in err


def test_a_time_budget_saves_the_step_it_stops_at_and_resume_continues(out, capsys):
    from ediff_core.tools.cli import main

    def steps() -> list[int]:
        return [int(r[0]) for r in list(csv.reader(open(out / "_train" / "base" / "shared" / "loss.csv")))[1:]]

    logs = []
    run("tiny", "base", out, overrides={"base_steps": 10**6}, minutes=0.04, log=logs.append)
    stopped = steps()[-1]
    assert 1 <= stopped < 10**6 and steps() == list(range(1, stopped + 1))
    assert json.loads((out / "base" / "shared" / "training.json").read_text())["step"] == stopped
    assert json.loads((out / "_train" / "base" / "shared" / "state.json").read_text())["step"] == stopped
    assert any(f"time budget spent at step {stopped} of 1000000" in m for m in logs)
    run("tiny", "base", out, resume=True, overrides={"base_steps": stopped + 3}, minutes=5, log=logs.append)
    assert steps() == list(range(1, stopped + 4)) and any(f"resumed at step {stopped}" in m for m in logs)
    # The budget covers the jobs together: a long first expert leaves the others for a resume.
    run("tiny", "experts", out, overrides={"expert_steps": 10**6}, minutes=0.04, log=logs.append)
    assert any("not started: base/complement_3_5, base/E3_0, base/baseline" in m for m in logs)
    assert main(["train", "--preset", "tiny", "--stage", "base", "--out", str(out), "--minutes", "0"]) == 2
    assert "minutes must be a positive time budget" in capsys.readouterr().err


@pytest.mark.gpu
def test_training_runs_on_cuda_and_resumes_across_devices(out):
    """Two steps on the CPU, then the exact resume (weights, EMA, AdamW moments) on CUDA, the
    experts and SR there too; what is saved stays loadable on the CPU."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    from safetensors.torch import load_file

    from ediff_core.pipeline import EDiffPipeline
    from ediff_core.core.request import GenerationRequest

    logs = []
    run("tiny", "base", out, overrides={"base_steps": 2}, log=logs.append, device="cpu")
    run("tiny", "base", out, resume=True, overrides={"base_steps": 4}, log=logs.append, device="cuda")
    assert any("resumed at step 2" in m for m in logs) and any(m.startswith("training on cuda (") for m in logs)
    rows = list(csv.reader(open(out / "_train" / "base" / "shared" / "loss.csv")))
    assert [int(r[0]) for r in rows[1:]] == [1, 2, 3, 4] and all(math.isfinite(float(r[1])) for r in rows[1:])
    assert {t.device.type for t in load_file(str(out / "_train" / "base" / "shared" / "state.safetensors")).values()} == {"cpu"}
    run("tiny", "experts", out, log=logs.append, device="cuda")
    run("tiny", "sr", out, log=logs.append, device="cuda")
    assert json.loads((out / "sr64" / "single" / "training.json").read_text())["device"].startswith("cuda (")
    assert EDiffPipeline.from_pretrained(out, device="cpu")(GenerationRequest("a red circle", steps=3, sr_steps=2)).images[0].size == (64, 64)


def test_lr_override_and_a_warm_start_warms_the_learning_rate_up_again(out, capsys):
    """A warm start (exported weights, no optimizer state) gets a fresh AdamW, so its lr ramps again."""
    from ediff_core.tools.cli import main

    def lrs() -> dict[int, float]:
        return {int(r[0]): float(r[2]) for r in list(csv.reader(open(out / "_train" / "base" / "shared" / "loss.csv")))[1:]}

    run("tiny", "base", out, overrides={"base_steps": 2, "lr": 1e-3, "warmup": 4})
    assert lrs() == {1: 2.5e-4, 2: 5e-4}
    for f in ("state.safetensors", "state.json"):
        (out / "_train" / "base" / "shared" / f).unlink()
    logs = []
    run("tiny", "base", out, resume=True, overrides={"base_steps": 7, "lr": 1e-3, "warmup": 4}, log=logs.append)
    assert any("warm start from exported weights at step 2" in m and "warms up again" in m for m in logs)
    assert [lrs()[s] for s in range(3, 8)] == [2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3]
    # The CLI flag reaches the job record; a non-positive rate is refused by name.
    args = ["train", "--preset", "tiny", "--stage", "base", "--out", str(out), "--resume", "--base-steps", "8"]
    assert main([*args, "--lr", "2e-4"]) == 0
    assert json.loads((out / "base" / "shared" / "training.json").read_text())["config"]["lr"] == 2e-4
    assert lrs()[8] == 2e-4
    for bad in ("0", "-1e-4"):
        assert main([*args, f"--lr={bad}"]) == 2
        assert "lr must be a positive learning rate" in capsys.readouterr().err


def test_a_warm_start_grows_new_attention_blocks_without_changing_the_function(tiny_pipe, batch, out):
    """`mini_attn32` warm-starts from a `mini` run: new attention blocks start as exact no-ops, then train."""
    from ediff_core.core.networks import EDiffUNet
    from ediff_core.tools.training import grow_into

    run("tiny", "base", out, overrides={"base_steps": 2})
    src = EDiffUNet.from_pretrained(out / "base" / "shared", low_cpu_mem_usage=False).float().eval()
    grown = build_unet("tiny_attn", 32, tiny_pipe.encoders.dims).float().eval()
    assert grow_into(grown, src.state_dict()) == ["unet.down_blocks.0.attentions.0", "unet.up_blocks.1.attentions.0", "unet.up_blocks.1.attentions.1"]
    cond = tiny_pipe.encoders.encode(batch["caption"], (batch["image"] + 1) / 2)
    x, sigma = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.full((8,), 2.0)
    with torch.no_grad():
        assert torch.equal(denoiser(grown)(x, sigma, cond), denoiser(src)(x, sigma, cond))
    # A network that lacks blocks of the source (not only new attention) is refused by what is wrong.
    with pytest.raises(ValueError, match="weights do not fit this network: unexpected"):
        grow_into(build_unet("tiny", 32, tiny_pipe.encoders.dims), grown.state_dict())
    # Through `train --resume` on exported weights: the run logs the warm start and the new blocks learn.
    for f in ("state.safetensors", "state.json"):
        (out / "_train" / "base" / "shared" / f).unlink()
    logs = []
    run("tiny", "base", out, resume=True, overrides={"base_steps": 4, "base_unet": "tiny_attn", "lr": 1e-2}, log=logs.append)
    assert any("warm start from exported weights at step 2" in m for m in logs)
    trained = EDiffUNet.from_pretrained(out / "base" / "shared", low_cpu_mem_usage=False)
    assert tuple(trained.config.attention) == (True, True)
    assert trained.unet.down_blocks[0].attentions[0].proj_out.weight.abs().sum() > 0


def test_a_two_expert_layout_from_a_config_file_sets_the_jobs_the_baseline_and_the_index(tmp_path):
    """The expert tree (§3.2, Fig. 2) is data: a config file's `layout` trains two experts; no training steps."""
    from dataclasses import replace

    from ediff_core.tools.cli import apply_config_file, build_parser
    from ediff_core.core.experts import ExpertSpec, check_tiling
    from ediff_core.core.model_folder import ModelIndex

    split, out = node(1, 1).lo, tmp_path / "run"  # the median of p(σ)
    (tmp_path / "run.yaml").write_text(f"preset: tiny\nout: {out}\nlayout:\n  - {{name: high, sigma_min: {split}, sigma_max: null, steps: 5}}\n"
                                       f"  - {{name: low, sigma_min: 0.0, sigma_max: {split}, steps: 7}}\n")
    parser, argv = build_parser(), ["train", "--config", str(tmp_path / "run.yaml")]
    args = apply_config_file(parser, parser.train_parser, argv, parser.parse_args(argv))
    cfg = replace(PRESETS[args.preset], **args.config_overrides)
    _, jobs = expert_jobs(cfg)
    assert [(j.name, j.steps, j.init) for j in jobs] == [("base/high", 5, "base/shared"), ("base/low", 7, "base/shared")]
    assert baseline_job(cfg).steps == 12
    for job in ("base/shared", "base/high", "base/low"):
        (out / job).mkdir(parents=True)
        (out / job / "config.json").write_text("{}")
    write_model_index(out, cfg)
    experts = ModelIndex.from_json(json.loads((out / "model_index.json").read_text()), "index").base.experts
    assert [(e.name, e.path, e.sigma_min, e.sigma_max) for e in experts] == [("low", "base/low", 0.0, split), ("high", "base/high", split, math.inf)]
    check_tiling([ExpertSpec(e.name, Interval(e.sigma_min, e.sigma_max)) for e in experts])
    gap = [{"name": "high", "sigma_min": 2 * split, "sigma_max": None}, {"name": "low", "sigma_min": 0.0, "sigma_max": split}]
    with pytest.raises(ValueError, match="layout: the leaf experts' expert σ intervals leave a gap"):
        run("tiny", "experts", tmp_path / "never", overrides={"layout": gap})
    assert not (tmp_path / "never").exists()


def test_the_data_workers_encode_each_batch_as_the_main_process_would(out):
    """feed.EncodingCollate: the batch a worker sends carries the encoders' output on its own captions and images."""
    from dataclasses import fields, replace

    from ediff_core.tools.training import batches, load_training_encoders

    enc = load_training_encoders(out)
    cfg = replace(PRESETS["tiny"], data_workers=1)
    batch = next(iter(batches(cfg, 7, enc=enc)))
    assert set(batch) >= {"cond", "caption", "image"}
    again = enc.encode(list(batch["caption"]), (batch["image"] + 1) / 2)
    for f in fields(again):
        a, b = getattr(batch["cond"], f.name), getattr(again, f.name)
        assert (a is None and b is None) or torch.allclose(a, b, atol=1e-6), f.name
    assert "cond" not in next(iter(batches(cfg, 7)))  # without encoders the workers send the data only


def test_encoding_in_the_workers_trains_what_encoding_in_the_main_process_trains(out, tmp_path):
    import shutil

    losses = {}
    for flag in (True, False):
        run_dir = tmp_path / f"run-{flag}"
        shutil.copytree(out, run_dir)
        run("tiny", "base", run_dir, overrides={"data_workers": 1, "encode_in_workers": flag, "base_steps": 4})
        assert json.loads((run_dir / "base" / "shared" / "training.json").read_text())["config"]["encode_in_workers"] is flag
        rows = list(csv.DictReader(open(run_dir / "_train" / "base" / "shared" / "loss.csv")))
        losses[flag] = [float(r["loss"]) for r in rows]
    assert len(losses[True]) == 4
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)
