"""Token grounding: caption spans, token positions, object masks, the loss, its attention path, and
that W = 0 is today's training step bit for bit."""

import contextlib
import copy
import csv
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from ediff_core.core.conditioning import key_layout
from ediff_core.data.captions import SIZE_WORDS, captions, grounded_captions
from ediff_core.data.shapes_world import object_masks, sample_scene
from ediff_core.tools.grounding import GroundingTargets, batch_targets, grounding_fields, layer_grounding_loss
from ediff_core.tools.grounding_attention import GroundingAttnProcessor, install_grounding
from ediff_core.core.loss import EDMLoss
from ediff_core.core.model_folder import default_model_path
from ediff_core.core.networks import build_unet, denoiser
from ediff_core.tools.feed import Feed
from ediff_core.tools.training import PRESETS, ShapesStream, _lr, batches, load_training_encoders, run


@pytest.fixture(scope="module")
def mini_encoders():
    from ediff_core.core.embed import load_encoder_set

    folder = default_model_path()
    return load_encoder_set(str(folder / "t5"), str(folder / "clip"))


def _scenes(n_per_count: int = 6):
    return [sample_scene(1000 * k + i, n_objects=k) for k in (1, 2, 3, 4) for i in range(n_per_count)]


def _object_words(scene, objects) -> set[str]:
    words = set()
    for o in (scene.objects[i] for i in objects):
        words |= {o.color, o.shape, o.shape + "s", *SIZE_WORDS[o.size]}
    return words


def test_spans_name_their_objects_and_groups_cover_repeated_pairs():
    for scene in _scenes():
        caps = grounded_captions(scene)
        assert {k: c.text for k, c in caps.items()} == captions(scene)
        for kind, cap in caps.items():
            groups = cap.groups()
            assert sorted(i for g in groups for i in g) == list(range(len(scene.objects))), (kind, cap.text)
            for objects, spans in groups.items():
                assert len({(scene.objects[i].color, scene.objects[i].shape) for i in objects}) == 1
                for a, b in spans:
                    assert cap.text[a:b] in _object_words(scene, objects), (cap.text, cap.text[a:b])
                    assert (a == 0 or not cap.text[a - 1].isalnum()) and (b == len(cap.text) or not cap.text[b].isalnum())
                if len(objects) > 1:  # "two blue stars": one group, the plural word
                    assert kind == "short" and any(cap.text[a:b] == scene.objects[objects[0]].shape + "s" for a, b in spans)
    # a scene with a repeated (colour, shape) pair groups it in short captions
    grouped = [s for s in (sample_scene(i, n_objects=4) for i in range(400)) if any(len(g) > 1 for g in grounded_captions(s)["short"].groups())]
    assert grouped


@pytest.mark.parametrize("tokenizer", ["t5", "clip_text"])
def test_span_token_positions_decode_back_to_the_objects_words(mini_encoders, tokenizer):
    enc = getattr(mini_encoders, tokenizer)
    checked = 0
    for scene in _scenes():
        for kind, cap in grounded_captions(scene).items():
            strings = enc.token_strings(cap.text)
            for objects, spans in cap.groups().items():
                for span in spans:
                    pos = enc.span_token_positions(cap.text, [span])
                    word = cap.text[span[0] : span[1]]
                    if not pos:  # only past the tokenizer's length
                        assert enc.truncated(cap.text), (kind, cap.text, word)
                        continue
                    assert "".join(strings[p] for p in pos).lower() == word, (kind, cap.text, word, [strings[p] for p in pos])
                    checked += 1
                union = enc.span_token_positions(cap.text, spans)
                assert union == sorted({p for s in spans for p in enc.span_token_positions(cap.text, [s])})
    assert checked > 300
    with pytest.raises(ValueError, match="cleaning leaves in place") if tokenizer == "clip_text" else contextlib.nullcontext():
        enc.span_token_positions("a  RED &amp; circle", [(3, 6)])


def test_object_masks_cover_each_object_and_groups_take_the_union():
    scene = next(s for s in (sample_scene(i, n_objects=4) for i in range(400)) if any(len(g) > 1 for g in grounded_captions(s)["short"].groups()))
    m = object_masks(scene, 32)
    assert m.shape == (4, 32, 32) and m.min() >= 0 and m.max() <= 1
    for o, mask in zip(scene.objects, m):
        ys, xs = np.nonzero(mask)
        assert abs((xs.mean() + 0.5) / 32 - o.cx) < 0.05 and abs((ys.mean() + 0.5) / 32 - o.cy) < 0.05
        box = (2 * o.r * 32) ** 2
        assert 0.3 * box < mask.sum() <= 1.1 * box  # shapes fill 38 % (star) to 100 % (square) of their box (+ edge pixels)
    assert (m > 0).sum(0).max() == 1  # objects never overlap
    cap = grounded_captions(scene)["short"]
    fields = grounding_fields(scene, cap, 32)
    for g, (objects, spans) in enumerate(cap.groups().items()):
        assert torch.equal(fields["ground_masks"][g], torch.from_numpy(m[list(objects)].max(0)))
        assert fields["ground_spans"][g, : len(spans)].tolist() == [list(s) for s in spans]
        assert (fields["ground_spans"][g, len(spans) :] == -1).all()
    assert not fields["ground_masks"][len(cap.groups()) :].any()


def _targets(mask: torch.Tensor, columns: list[int], S: int = 10) -> GroundingTargets:
    cols = torch.zeros(1, 1, S)
    cols[0, 0, columns] = 1
    return GroundingTargets(cols, mask[None, None], torch.ones(1, 1, dtype=torch.bool))


def test_the_loss_is_zero_inside_the_mask_and_positive_otherwise():
    H = 8
    mask = torch.zeros(H, H)
    mask[2:5, 3:6] = 1
    mask[5, 3:6] = 0.5  # a partly covered row
    t = _targets(mask, [3, 4])
    m = mask.flatten()  # the layer is at the mask's resolution
    probs = torch.zeros(1, 2, H * H, 10)
    probs[..., 3] = 0.5 * m
    probs[..., 4] = 0.5 * m  # the object's two tokens take exactly its coverage
    probs[..., 0] = 1 - m  # the rest on the null token
    assert layer_grounding_loss(probs, t).item() == pytest.approx(0.0, abs=1e-5)
    uniform = torch.full((1, 2, H * H, 10), 0.1)
    outside = probs.clone()
    outside[..., 3:5], outside[..., 0] = outside[..., 3:5].roll(3, dims=-2), 1 - outside[..., 3:5].roll(3, dims=-2).sum(-1)
    assert layer_grounding_loss(uniform, t).item() > 0.1
    assert layer_grounding_loss(outside, t).item() > layer_grounding_loss(uniform, t).item()
    # at a coarser layer the mask is area-downsampled: attention on any covered cell counts as inside
    coarse = torch.zeros(1, 2, 16, 10)
    covered = torch.nn.functional.interpolate(mask[None, None], size=(4, 4), mode="area").flatten()
    coarse[..., 3], coarse[..., 0] = covered, 1 - covered
    assert layer_grounding_loss(coarse, t).item() == pytest.approx(0.0, abs=1e-5)
    # a group whose columns are all hidden (its encoders dropped) is not counted
    hidden = GroundingTargets(t.columns, t.masks, torch.zeros(1, 1, dtype=torch.bool))
    assert layer_grounding_loss(uniform, hidden).item() == 0.0


def test_the_loss_is_finite_and_the_same_under_bf16_autocast():
    """bf16 training (train --precision bf16): the loss is computed in fp32, or 1 - 1e-6 rounds to
    1 and log(1 - a) is -inf where a mask is full (a NaN grounding loss in the first bf16 probe)."""
    H = 8
    mask = torch.zeros(H, H)
    mask[2:5, 3:6] = 1
    t = _targets(mask, [3, 4])
    probs = torch.full((1, 2, H * H, 10), 0.1)
    probs[..., 3] = mask.flatten()  # all of a pixel's attention on the object's token: a = 1
    want = layer_grounding_loss(probs, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = layer_grounding_loss(probs, t)
    assert torch.isfinite(got) and got.dtype == torch.float32
    assert got.item() == pytest.approx(want.item(), rel=1e-6)


@pytest.fixture(scope="module")
def grounded_batch(tiny_pipe):
    stream = iter(ShapesStream(replace(PRESETS["tiny"], grounding=1.0), seed=0))
    items = [next(stream) for _ in range(6)]
    b = {k: torch.stack([it[k] for it in items]) for k in ("image", "base", "ground_spans", "ground_masks")}
    b["caption"] = [it["caption"] for it in items]
    enc = tiny_pipe.encoders
    cond = enc.encode(b["caption"], (b["image"] + 1) / 2)
    return b, cond


def test_the_grounding_processor_computes_the_fused_attention_and_its_loss_trains_it(tiny_pipe, grounded_batch):
    torch.manual_seed(0)
    b, cond = grounded_batch
    enc = tiny_pipe.encoders
    targets = batch_targets(enc, b["caption"], b["ground_spans"], b["ground_masks"], cond.keep, cond.t5_tokens.shape[1], cond.clip_tokens.shape[1])
    layout = key_layout(cond.t5_tokens.shape[1], cond.clip_tokens.shape[1])
    assert targets.columns[:, :, layout["clip"]].any() and targets.columns[:, :, layout["t5"]].any()
    assert not targets.columns[:, :, layout["null"]].any() and not targets.columns[:, :, layout["image"]].any()
    net = build_unet("tiny", 32, enc.dims)
    stock = copy.deepcopy(net)
    recorder = install_grounding(net)
    procs = [m.processor for m in net.unet.modules() if isinstance(m, Attention)]
    assert procs and all(isinstance(p, GroundingAttnProcessor) for p in procs)
    assert all(type(m.processor) is AttnProcessor2_0 for m in stock.unet.modules() if isinstance(m, Attention))
    D, D0 = denoiser(net), denoiser(stock)
    x, sigma = torch.randn(6, 3, 32, 32), torch.full((6,), 2.0)
    with recorder.recording(targets):
        out = D(x, sigma, cond)
    n_cross = sum(1 for m in net.unet.modules() if isinstance(m, Attention) and m.is_cross_attention)
    assert len(recorder.losses) == n_cross
    torch.testing.assert_close(out, D0(x, sigma, cond), atol=1e-5, rtol=1e-4)  # the written-out attention is the fused one
    assert torch.equal(D(x, sigma, cond), D0(x, sigma, cond))  # not recording: the fused processor itself
    # the loss is differentiable and a few steps on it alone lower it
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        with recorder.recording(targets):
            D(x, sigma, cond)
        loss = recorder.loss()
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < 0.9 * losses[0], losses


def test_w0_is_todays_training_step_bit_for_bit_and_w_changes_it(tiny_model, tmp_path):
    """train_job at W = 0 against one step of the recipe written out: seed, network, AdamW, EMA."""
    import shutil

    from safetensors.torch import load_file

    def fresh(name):
        folder = tmp_path / name
        shutil.copytree(tiny_model / "t5", folder / "t5")
        shutil.copytree(tiny_model / "clip", folder / "clip")
        return folder

    def trained(folder, **over):
        run("tiny", "base", folder, overrides={"base_steps": 1, "data_workers": 0, **over}, log=lambda s: None)
        t = load_file(str(folder / "_train" / "base" / "shared" / "state.safetensors"))
        return {k[4:]: v for k, v in t.items() if k.startswith("net.")}, {k[4:]: v for k, v in t.items() if k.startswith("ema.")}

    folder = fresh("w0")
    net_w0, ema_w0 = trained(folder)
    cfg = replace(PRESETS["tiny"], base_steps=1, data_workers=0)
    enc = load_training_encoders(folder)
    torch.manual_seed(cfg.seed)
    net = build_unet(cfg.base_unet, cfg.base_resolution, enc.dims).float().train()
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed * 1000)
    batch = next(iter(batches(cfg, cfg.seed * 100003)))
    cond = Feed().conditioning(enc, batch, cfg, gen)
    for g in opt.param_groups:
        g["lr"] = _lr(cfg, 0)
    loss = EDMLoss()(denoiser(net), batch["base"], cond, gen).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
    opt.step()
    with torch.no_grad():
        for pe, pn in zip(ema.parameters(), net.parameters()):
            pe.lerp_(pn, 1 - min(cfg.ema_decay, 1 / 10))
    assert net_w0.keys() == net.state_dict().keys()
    assert all(torch.equal(net_w0[k], v) for k, v in net.state_dict().items())
    assert all(torch.equal(ema_w0[k], v) for k, v in ema.state_dict().items())
    net_w, _ = trained(fresh("w1"), grounding=1.0)
    assert not all(torch.equal(net_w[k], v) for k, v in net.state_dict().items())


def test_train_cli_grounding_is_recorded_logged_and_checked(tiny_model, tmp_path, capsys):
    import shutil

    from ediff_core.tools.cli import main

    out = tmp_path / "run"
    shutil.copytree(tiny_model / "t5", out / "t5")
    shutil.copytree(tiny_model / "clip", out / "clip")
    assert main(["train", "--preset", "tiny", "--stage", "base", "--out", str(out), "--grounding", "0.5", "--precision", "bf16"]) == 0
    config = json.loads((out / "base" / "shared" / "training.json").read_text())["config"]
    assert config["grounding"] == 0.5 and config["precision"] == "bf16"
    rows = list(csv.DictReader(open(out / "_train" / "base" / "shared" / "loss.csv")))
    assert rows and all(float(r["grounding"]) > 0 for r in rows)
    assert main(["train", "--preset", "tiny", "--stage", "base", "--out", str(out), "--grounding", "-1"]) == 2
    assert "grounding must be a loss weight >= 0" in capsys.readouterr().err
