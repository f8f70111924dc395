"""Style transfer (§5.3), encoder ablation (§5.2), attention maps (Fig. 3), prompt switching (Fig. 4)
and the control measurements, on the tiny random model in the real formats."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from ediff_core.features.ablation import ablation_grid, grid
from ediff_core.features.attention_maps import attention_overlay, share_on_null, token_columns
from ediff_core.core.conditioning import ENCODER_MODES
from ediff_core.data.shapes_world import STYLES, make_scene, render, sample_scene, split_seed
from ediff_core.tools.eval.suite import ControlRate
from ediff_core.tools.eval.control import classify_style, paint_placement_rate, placement_layout, style_rate
from ediff_core.features.paint_with_words import PaintSpec
from ediff_core.features.prompt_switch import prompt_switch_sweep
from ediff_core.core.request import GenerationRequest, RequestError
from ediff_core.features.style import reference_tensor, style_steps

PROMPT = "a red circle and a blue star"


@pytest.fixture(scope="module")
def reference():
    return render(make_scene([("circle", "red", "large", 0.3, 0.3)], style="night"))


def _same(a, b) -> bool:
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip([*a.images, *a.stage_images["base"]], [*b.images, *b.stage_images["base"]]))


def test_style_strength_and_window(tiny_pipe, reference):
    req = GenerationRequest(PROMPT, seed=3)
    plain = tiny_pipe(req)
    styled = tiny_pipe(replace(req, style_image=reference))
    assert not _same(plain, styled)
    assert _same(plain, tiny_pipe(replace(req, style_image=reference, style_strength=0.0)))
    # A window outside the schedule [σ_min, σ_max] = [0.002, 80] is no style; one covering it all is full style.
    assert _same(plain, tiny_pipe(replace(req, style_image=reference, style_sigma=(100.0, 200.0))))
    assert _same(styled, tiny_pipe(replace(req, style_image=reference, style_sigma=(0.0, 1000.0))))
    half = tiny_pipe(replace(req, style_image=reference, style_sigma=(0.0, 1.0)))
    assert not _same(half, plain) and not _same(half, styled)
    assert _same(styled, tiny_pipe(replace(req, style_image=reference, style_strength=1.0)))
    assert not _same(styled, tiny_pipe(replace(req, style_image=reference, style_strength=2.0)))
    assert style_steps([80.0, 5.0, 0.5, 0.002], (0.1, 10.0)) == [False, True, True, False]


def test_style_combines_with_text_paint_and_prompt_switch(tiny_pipe, reference):
    sketch = Image.new("RGB", (32, 32), "white")
    ImageDraw.Draw(sketch).rectangle([0, 0, 15, 31], fill="#ff0000")
    paint = PaintSpec(sketch, {"#ff0000": "red circle"})
    req = GenerationRequest(PROMPT, seed=4, style_image=reference, style_strength=0.7, style_sigma=(0.3, 80.0))
    styled = tiny_pipe(req)
    both = tiny_pipe(replace(req, paint=paint, pww_weight=1.0))
    assert not _same(styled, both) and both.metadata[0]["paint"]["phrases"][0]["phrase"] == "red circle"
    # The switched prompt keeps the style at the same strength: switching to the same prompt changes nothing.
    assert _same(styled, tiny_pipe(replace(req, switch_prompt=PROMPT, switch_sigma=5.0)))


def test_reference_images_are_checked():
    assert reference_tensor(Image.new("LA", (16, 16))).shape == (1, 3, 16, 16)
    assert reference_tensor(np.zeros((16, 20, 3), np.uint8)).shape == (1, 3, 16, 20)
    with pytest.raises(RequestError, match="image mode 'F' is not supported") as e:
        reference_tensor(Image.new("F", (16, 16)))
    assert e.value.field == "style_image"
    with pytest.raises(RequestError, match="at least 8x8"):
        reference_tensor(Image.new("RGB", (4, 16)))


def test_attention_shares_sum_to_one_and_overlays(tiny_pipe):
    result = tiny_pipe(GenerationRequest(PROMPT, seed=5, steps=3, sampler="heun", num_images=2, attention_maps=True))
    att = result.attention
    assert len(att["sigmas"]) == 2 * 3 - 1 and att["maps"].shape[:3] == (5, 2, len(att["tokens"]))
    assert att["tokens"][0] == "<null>" and att["tokens"][-1] == "<image>"
    shares = share_on_null(att)
    assert shares == att["shares"] and [s["sigma"] for s in shares] == att["sigmas"]
    for s in shares:
        assert s["null"] + s["text"] + s["image"] == pytest.approx(1.0, abs=1e-5)
        assert min(s["null"], s["text"], s["image"]) >= 0 and s["image"] == pytest.approx(0.0, abs=1e-6)  # no reference: masked
    per_pixel = att["maps"].sum(2)  # every pixel's attention is a distribution over the keys
    assert torch.allclose(per_pixel, torch.ones_like(per_pixel), atol=1e-5)
    assert [att["tokens"][j] for j in token_columns(att, "star")] == ["star", "star"]  # CLIP and T5
    img = attention_overlay(result, "red circle", index=1, size=64)
    assert img.size == (64, 64) and img.mode == "RGB"
    assert attention_overlay(result, "<null>", step=0).size == (256, 256)
    with pytest.raises(ValueError, match="'heart' is not a word of the prompt"):
        attention_overlay(result, "heart")
    assert tiny_pipe(GenerationRequest(PROMPT, seed=5)).attention is None


def test_encoder_ablation_gives_three_different_images(tiny_pipe):
    req = GenerationRequest(PROMPT, seed=6)
    results = {mode: tiny_pipe(replace(req, encoders=mode)) for mode in ENCODER_MODES}
    assert list(results) == ["both", "t5", "clip"]
    arrays = [np.asarray(r.images[0]) for r in results.values()]
    assert all(not np.array_equal(arrays[i], arrays[j]) for i in range(3) for j in range(i + 1, 3))
    assert [r.metadata[0]["seed"] for r in results.values()] == [6, 6, 6]
    assert [r.metadata[0]["encoders"] for r in results.values()] == ["both", "t5", "clip"]
    g = ablation_grid(results)
    assert g.size == (3 * 192, 192 + 22)
    assert grid([results["t5"].images[0]], ["T5 only"], tile=64).size == (64, 86)
    with pytest.raises(ValueError, match="2 images but 1 labels"):
        grid([g, g], ["x"])


def test_prompt_switch_above_sigma_max_is_b_below_sigma_min_is_a(tiny_pipe):
    a, b = "a red circle", "two blue stars"
    sweep = prompt_switch_sweep(tiny_pipe, a, b, [1000.0, 1.0, 0.001], seed=7)
    only_b = tiny_pipe(GenerationRequest(b, seed=7))
    only_a = tiny_pipe(GenerationRequest(a, seed=7))
    assert np.array_equal(np.asarray(sweep.base_images[0]), np.asarray(only_b.stage_images["base"][0]))
    assert np.array_equal(np.asarray(sweep.base_images[2]), np.asarray(only_a.stage_images["base"][0]))
    assert sweep.change[0] == pytest.approx(sweep.reference) and sweep.reference > 0
    assert sweep.change[2] == 0.0 and 0 < sweep.change[1]
    assert np.array_equal(np.asarray(sweep.no_switch), np.asarray(only_a.images[0]))


def test_style_classifier_on_clean_renders():
    for k, style in enumerate(STYLES):
        s = sample_scene(split_seed("validation", 77 + k))
        scene = make_scene([(o.shape, o.color, o.size, o.cx, o.cy) for o in s.objects], style=style, seed=s.seed)
        assert classify_style(render(scene, 64)) == style
        assert classify_style(render(scene, 32)) == style


def test_control_measurements_run_on_the_tiny_model(tiny_pipe):
    prompt, objects, sketch, phrases = placement_layout(11)
    assert 2 <= len(objects) <= 3 and len({o.color for o in objects}) == len(objects)
    assert all(p in prompt for p in phrases.values()) and sketch.size == (256, 256)
    for with_pww in (True, False):
        r = paint_placement_rate(tiny_pipe, n=2, seed=11, with_pww=with_pww, steps=3)
        assert isinstance(r, ControlRate) and r.n == 2 and len(r.details) == 2 and 0 <= r.rate <= 1
    r = style_rate(tiny_pipe, "night", n=2, seed=11, steps=3)
    assert r.n == 2 and 0 <= r.rate <= 1 and all(d["classified"] in (*STYLES, None) for d in r.details)
    with pytest.raises(ValueError, match="unknown style 'neon'"):
        style_rate(tiny_pipe, "neon", n=1, seed=0)
