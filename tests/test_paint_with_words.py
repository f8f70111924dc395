"""Paint-with-words (§4.3) on the tiny random model in the real formats: processor, masks, phrases, errors."""

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from ediff_core.features.attention_maps import token_map
from ediff_core.core.conditioning import Cond, key_layout
from ediff_core.core.networks import EDiffUNet
from ediff_core.core.attention import EDiffAttnProcessor, install, layer_hw
from ediff_core.features.paint_with_words import PaintBias, PaintSpec, phrase_positions, token_maps
from ediff_core.core.request import GenerationRequest, RequestError

PROMPT = "a red circle and a blue star"


def _half_sketch(size=64, colour="#ff0000", mode="RGB", background="white"):
    """``colour`` on the left half, ``background`` elsewhere."""
    img = Image.new(mode, (size, size), background)
    ImageDraw.Draw(img).rectangle([0, 0, size // 2 - 1, size - 1], fill=colour)
    return img


def _cond_with_maps(pipe, weight):
    req = GenerationRequest(PROMPT, paint=PaintSpec.from_mapping(_half_sketch(), ["#ff0000=red circle"]), pww_weight=weight)
    return token_maps(pipe, req, pipe.encoders.encode([PROMPT]))


def test_processor_with_zero_weight_equals_stock_exactly(tiny_model, tiny_pipe):
    net = EDiffUNet.from_pretrained(tiny_model / "base" / "E2_3", low_cpu_mem_usage=False).float().eval()
    x, c_noise = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)), torch.log(torch.tensor([5.0])) / 4
    plain = tiny_pipe.encoders.encode([PROMPT])
    with torch.no_grad():
        stock = net(x, c_noise, plain)
        install(net, PaintBias())
        assert all(isinstance(p, EDiffAttnProcessor) for p in net.unet.attn_processors.values())
        painted0 = net(x, c_noise, _cond_with_maps(tiny_pipe, 0.0))
        plain_after = net(x, c_noise, plain)
        painted = net(x, c_noise, _cond_with_maps(tiny_pipe, 1.0))
    assert torch.equal(stock, painted0) and torch.equal(stock, plain_after)
    assert (painted - stock).abs().max() > 1e-3


def test_only_the_conditional_branch_is_steered(tiny_model, tiny_pipe):
    net = EDiffUNet.from_pretrained(tiny_model / "base" / "E2_3", low_cpu_mem_usage=False).float().eval()
    cond = _cond_with_maps(tiny_pipe, 1.0)
    both = Cond.cat([cond, cond.unconditional()])  # what classifier-free guidance runs
    assert both.token_maps[1].abs().sum() == 0 and both.pww_weight.tolist() == [1.0, 0.0]
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    c_noise = torch.log(torch.tensor([2.0, 2.0])) / 4
    with torch.no_grad():
        stock = net(torch.cat([x, x]), c_noise, replace(both, token_maps=None, pww_weight=None))
        install(net, PaintBias())
        out = net(torch.cat([x, x]), c_noise, both)
    assert torch.allclose(out[1], stock[1], atol=1e-5)  # unconditional row: stock attention
    assert (out[0] - stock[0]).abs().max() > 1e-3


def test_weight_raises_attention_inside_the_painted_region(tiny_pipe):
    paint = PaintSpec.from_mapping(_half_sketch(), ["#ff0000=red circle"])
    req = GenerationRequest(PROMPT, seed=1, attention_maps=True)
    plain, painted = tiny_pipe(req), tiny_pipe(replace(req, paint=paint, pww_weight=2.0))
    assert not np.array_equal(np.asarray(plain.images[0]), np.asarray(painted.images[0]))
    for r in (plain, painted):
        assert r.attention["maps"].shape[-2:] == (8, 8)
    m0, m1 = token_map(plain.attention, "red circle"), token_map(painted.attention, "red circle")
    assert m1[:, :4].mean() > 2 * m1[:, 4:].mean()  # painted left half vs unpainted right half
    assert m1[:, :4].mean() > 2 * m0[:, :4].mean()
    assert painted.metadata[0]["paint"]["phrases"][0]["phrase"] == "red circle"


def test_masks_and_token_maps_shapes_and_values(tiny_pipe):
    sketch = _half_sketch()
    sketch.putpixel((31, 5), (250, 25, 20))  # anti-aliased brush edge: snaps to red
    spec = PaintSpec.from_mapping(sketch, ["#FF0000=red circle@0.5", "#0000ff=blue star"])
    pm = spec.masks(16, 16)
    assert pm.masks.shape == (2, 16, 16) and pm.colours == ["#ff0000", "#0000ff"]
    assert torch.equal(pm.masks[0, :, :8], torch.ones(16, 8)) and pm.masks[0, :, 8:].sum() == 0
    assert pm.warnings == ["colour #0000ff ('blue star') does not appear in the sketch; that phrase is not painted"]
    cond = tiny_pipe.encoders.encode([PROMPT] * 2)
    req = GenerationRequest(PROMPT, paint=spec, pww_weight=0.7)
    notes = {}
    out = token_maps(tiny_pipe, req, cond, notes)
    lay = key_layout(tiny_pipe.encoders.t5.max_length)
    assert out.token_maps.shape == (2, lay["image"].stop, 16, 16) and out.pww_weight.tolist() == [pytest.approx(0.7)] * 2
    clip_pos, t5_pos = phrase_positions(tiny_pipe, PROMPT, "red circle")
    cols = [lay["clip"].start + p for p in clip_pos] + [lay["t5"].start + p for p in t5_pos]
    assert torch.equal(out.token_maps[:, cols], (0.5 * pm.masks[0]).expand(2, len(cols), 16, 16))
    others = [j for j in range(out.token_maps.shape[1]) if j not in cols]
    assert out.token_maps[:, others].abs().sum() == 0  # blue star is unpainted, null/image never
    assert notes["paint_warnings"] == pm.warnings
    # Each layer sees the maps bilinearly downsampled to its grid (16 px -> 8 x 8 tokens).
    assert layer_hw(64, 16, 16) == (8, 8) and layer_hw(32, 16, 32) == (4, 8)
    scores = torch.zeros(2, 2, 64, out.token_maps.shape[1])
    scores[..., 0] = 3.0  # max(QKᵀ)/√d = 3
    bias = PaintBias()(scores, None, out, torch.tensor([1.0, 1.0]), 64)
    A = bias[0, 0].reshape(8, 8, -1)[..., cols[0]]
    w_mask = 0.7 * np.log(2.0) * 3.0 * 0.5  # w′·log(1+σ)·max(QKᵀ/√d) times the phrase's strength
    assert torch.allclose(A[:, :3], torch.full((8, 3), w_mask)) and A[:, 5:].abs().max() == 0
    assert 0 < A[0, 4] < A[0, 3] < w_mask  # the bilinear filter softens the painted edge
    assert float(A.mean()) == pytest.approx(w_mask / 2, rel=1e-5)  # and keeps the painted mass


def test_transparent_pixels_and_editor_layers():
    rgba = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    ImageDraw.Draw(rgba).rectangle([0, 0, 15, 31], fill=(255, 0, 0, 255))
    ImageDraw.Draw(rgba).rectangle([16, 0, 31, 31], fill=(255, 0, 0, 0))  # red but fully transparent
    m = PaintSpec(rgba, {"#ff0000": "red circle"}).masks(8, 8).masks[0]
    assert torch.equal(m[:, :4], torch.ones(8, 4)) and m[:, 4:].sum() == 0
    spec = PaintSpec.from_editor({"background": Image.new("RGB", (32, 32), "white"), "layers": [rgba], "composite": None}, {"#ff0000": "red circle"})
    assert torch.equal(spec.masks(8, 8).masks[0], m)
    assert spec.describe() == {"phrases": [{"colour": "#ff0000", "phrase": "red circle", "strength": 1.0}], "sketch_size": [32, 32], "tolerance": 80.0}
    cmyk = _half_sketch(mode="CMYK", colour=(0, 255, 255, 0), background=(0, 0, 0, 0))  # converts: red on white
    assert torch.equal(PaintSpec(cmyk, {"#ff0000": "red circle"}).masks(8, 8).masks[0], m)


@pytest.mark.parametrize(
    "make,field,message",
    [
        (lambda: Image.new("RGBA", (32, 32), (255, 0, 0, 0)), "sketch", "the sketch is empty"),
        (lambda: Image.new("RGB", (32, 32), "white"), "sketch", r"no pixel of the sketch is within 80 of a mapped colour \(#ff0000\); its colours are #ffffff"),
        (lambda: Image.new("I;16", (32, 32)), "sketch", "image mode 'I;16' is not supported"),
        (lambda: Image.new("1", (4097, 4096)), "sketch", "at most 16777216 pixels; got 4097x4096"),
        (lambda: None, "sketch", "must be an image; got NoneType"),
    ],
)
def test_bad_sketches_are_refused_clearly(make, field, message):
    with pytest.raises(RequestError, match=message) as e:
        PaintSpec(make(), {"#ff0000": "red circle"}).masks(16, 16)
    assert e.value.field == field


@pytest.mark.parametrize(
    "entries,message",
    [
        (["ff0000 red circle"], "is not of the form '#RRGGBB=words of the prompt'"),
        (["#ff00=red circle"], "colour '#ff00' is not of the form #RRGGBB"),
        (["#ff0000=  "], "colour #ff0000 maps to an empty phrase"),
        (["#ff0000=red circle@lots"], "the strength after '@' must be a number"),
        (["#ff0000=red circle@99"], "the strength of 'red circle' must be a number from 0 to 10"),
        (["#ff0000=red circle", "#FF0000=blue star"], "colour #ff0000 is given twice"),
        ([], "map at least one colour of the sketch to a phrase of the prompt"),
    ],
)
def test_malformed_phrase_entries(entries, message):
    with pytest.raises(RequestError, match=message) as e:
        PaintSpec.from_mapping(_half_sketch(), entries)
    assert e.value.field == "phrases"


def test_phrase_positions_decode_to_the_phrase_in_both_tokenizers(tiny_pipe):
    clip, t5 = tiny_pipe.encoders.clip_text, tiny_pipe.encoders.t5
    prompt = "Two red circles and a Blue-Star"
    clip_pos, t5_pos = phrase_positions(tiny_pipe, prompt, "blue star")
    assert [clip.token_strings(prompt)[p] for p in clip_pos] == ["blue", "-", "star"]
    assert re.sub(r"\W", "", "".join(t5.token_strings(prompt)[p] for p in t5_pos)) == "bluestar"
    clip_pos, t5_pos = phrase_positions(tiny_pipe, prompt, "red circle")  # plural ending is covered
    assert "".join(clip.token_strings(prompt)[p] for p in clip_pos) == "redcircles"
    assert "".join(t5.token_strings(prompt)[p] for p in t5_pos).startswith("redcircle")


def test_phrase_absent_from_the_prompt_is_refused_by_name(tiny_pipe):
    paint = PaintSpec.from_mapping(_half_sketch(), ["#ff0000=green heart"])
    with pytest.raises(RequestError, match="phrase 'green heart' is not in the prompt 'a red circle and a blue star'") as e:
        tiny_pipe(GenerationRequest(PROMPT, paint=paint))
    assert e.value.field == "phrases"


def test_unused_colour_is_a_warning_in_the_result(tiny_pipe):
    paint = PaintSpec.from_mapping(_half_sketch(), ["#ff0000=red circle", "#00ff00=blue star"])
    result = tiny_pipe(GenerationRequest(PROMPT, seed=2, paint=paint))
    assert result.metadata[0]["paint_warnings"] == ["colour #00ff00 ('blue star') does not appear in the sketch; that phrase is not painted"]


def test_cli_prompts_file_with_paint_phrase_style_and_attention_maps(tiny_model, tmp_path, capsys):
    from ediff_core.tools.cli import main

    _half_sketch().save(tmp_path / "sketch.png")
    _half_sketch(colour="#2040c0", background="#f0e4c8").save(tmp_path / "style.png")
    lines = [
        {"prompt": PROMPT, "seed": 1, "paint": str(tmp_path / "sketch.png"), "phrase": "#ff0000=red circle", "pww_weight": 1.0, "out": str(tmp_path / "a.png")},
        {"prompt": PROMPT, "seed": 2, "style_image": str(tmp_path / "style.png"), "style_strength": 0.5, "style_sigma": [0.5, 80], "attention_maps": True, "out": str(tmp_path / "b.png")},
    ]
    (tmp_path / "reqs.jsonl").write_text("\n".join(json.dumps(d) for d in lines))
    assert main(["generate", "--model", str(tiny_model), "--device", "cpu", "--prompts-file", str(tmp_path / "reqs.jsonl"), "--json"]) == 0
    a, b = json.loads(capsys.readouterr().out)
    assert a["settings"]["paint"]["phrases"] == [{"colour": "#ff0000", "phrase": "red circle", "strength": 1.0}]
    assert b["settings"]["style_sigma"] == [0.5, 80] and b["settings"]["style_image"] == "64x64"
    assert {Path(p).name for p in b["attention_maps"]} >= {"b_attn_null.png", "b_attn_red.png", "b_attn_star.png"}
    assert all(Path(p).is_file() for p in b["attention_maps"])
    args = ["generate", "--model", str(tiny_model), "--device", "cpu", "--prompt", PROMPT, "--paint", str(tmp_path / "sketch.png")]
    assert main([*args, "--phrase", "#ff0000=green heart", "--style-sigma", "0", "1"]) == 2
    assert "phrases: phrase 'green heart' is not in the prompt" in capsys.readouterr().err
    assert main([*args, "--phrase", "#ff0000=red circle", "--attention-maps", "--style-sigma", "0", "1", "--out", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c_attn_circle.png").is_file()
