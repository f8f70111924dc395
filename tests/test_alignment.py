"""The Shapes World alignment metric on real renders: detection, verdicts, prompt parsing."""

from collections import Counter

import numpy as np
import pytest
import torch

from ediff_core.data import HELD_OUT, captions, make_scene, render, sample_scene
from ediff_core.data.captions import RELATION_MARGIN, relation
from ediff_core.tools.eval.alignment import (
    EVAL_KINDS, check_alignment, check_detections, detect_objects, eval_prompts, parse_prompt, scene_spec,
)

LEVELS = ("short", "medium", "long")


def _self_alignment(size: int, seeds: range) -> tuple[float, dict[str, float]]:
    """Share of scenes aligned with their own captions at all levels; per-shape detection accuracy."""
    aligned, hits, totals = 0, Counter(), Counter()
    for seed in seeds:
        scene = sample_scene(seed)
        dets = detect_objects(render(scene, size))
        caps = captions(scene)
        ok = all(check_detections(dets, scene_spec(scene, lvl)).aligned for lvl in LEVELS)
        ok &= all(check_detections(dets, parse_prompt(caps[lvl])).aligned for lvl in LEVELS)
        aligned += ok
        for o in scene.objects:
            same = [d for d in dets if d.color == o.color]
            near = min(same, key=lambda d: (d.cx - o.cx) ** 2 + (d.cy - o.cy) ** 2, default=None)
            totals[o.shape] += 1
            hits[o.shape] += near is not None and near.shape == o.shape
    return aligned / len(seeds), {s: hits[s] / totals[s] for s in totals}


@pytest.mark.parametrize("size", [64, 32])
def test_rendered_scenes_align_with_their_own_captions(size):
    rate, per_shape = _self_alignment(size, range(200))
    print(f"\n{size} px: {rate:.1%} of 200 scenes aligned at all levels; per shape {per_shape}")
    assert rate >= 0.95
    assert min(per_shape.values()) >= 0.9, per_shape


def test_detections_locate_objects():
    scene = make_scene([("circle", "red", "large", 0.2, 0.2), ("star", "blue", "small", 0.75, 0.8)], "comic", seed=4)
    dets = detect_objects(render(scene))
    assert [(d.color, d.shape, d.cell) for d in dets] == [("red", "circle", "top left"), ("blue", "star", "bottom right")]
    for d, o in zip(dets, scene.objects):
        assert abs(d.cx - o.cx) < 0.01 and abs(d.cy - o.cy) < 0.01
    image = render(scene)
    tensor = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 127.5 - 1
    assert detect_objects(np.asarray(image)) == dets
    assert [(d.color, d.shape) for d in detect_objects(tensor)] == [(d.color, d.shape) for d in dets]


def test_mismatched_captions_are_rejected():
    image = render(make_scene([("circle", "red", "large", 0.2, 0.2), ("square", "blue", "small", 0.75, 0.25)], "plain"))
    assert check_alignment(image, "a red circle and a blue square").aligned
    assert check_alignment(image, "a red circle at the top left and a blue square at the top right").aligned
    with pytest.raises(ValueError, match="phrase found"):  # a relation alone introduces no objects
        check_alignment(image, "the red circle is left of the blue square.")
    verdict = check_alignment(image, "a blue square")
    assert not verdict.aligned and not verdict.counts_ok and "found" in verdict.details
    verdict = check_alignment(image, "a red square and a blue square")
    assert verdict.counts_ok and not verdict.shapes_ok and not verdict.aligned
    verdict = check_alignment(image, "a red circle at the bottom right and a blue square at the top right")
    assert verdict.shapes_ok and not verdict.positions_ok and not verdict.aligned
    assert not check_alignment(image, "two red circles and a blue square").aligned
    good = "A big red circle in the top left corner and a small blue square at the top right. The red circle is left of the blue square."
    bad = good.replace("left of", "right of")
    assert check_alignment(image, good).aligned
    verdict = check_alignment(image, bad)
    assert verdict.positions_ok and not verdict.relations_ok and not verdict.aligned


def test_parse_prompt_reads_our_captions_back():
    for seed in range(600):
        scene = sample_scene(seed)
        caps = captions(scene)
        for lvl in LEVELS:
            spec, ref = parse_prompt(caps[lvl]), scene_spec(scene, lvl)
            key = (lambda o: (o.color, o.shape)) if lvl == "short" else (lambda o: (o.color, o.shape, o.cell))
            assert Counter(map(key, spec.objects)) == Counter(map(key, ref.objects)), caps[lvl]
        spec = parse_prompt(caps["long"])
        assert spec.style == scene.style
        for i, rel, j in spec.relations:  # every stated relation holds with the margin in the scene
            a = next(o for o in scene.objects if (o.color, o.shape) == (spec.objects[i].color, spec.objects[i].shape))
            b = next(o for o in scene.objects if (o.color, o.shape) == (spec.objects[j].color, spec.objects[j].shape))
            assert relation(a, b, RELATION_MARGIN) == rel
    spec = parse_prompt("three tiny green circles near the top, and a big orange heart in the middle")
    assert [(o.color, o.shape, o.cell, o.size) for o in spec.objects] == [("green", "circle", "top", "small")] * 3 + [
        ("orange", "heart", "center", "large")]
    with pytest.raises(ValueError, match="no '<colour> <shape>' phrase"):
        parse_prompt("a cat on a mat")


def test_eval_prompts():
    for kind in EVAL_KINDS:
        items = eval_prompts(kind, 12, seed=1)
        assert len(items) == 12 and items == eval_prompts(kind, 12, seed=1)
        for item in items:
            pairs = {(o.color, o.shape) for o in item.scene.objects}
            assert bool(pairs & HELD_OUT) == (kind == "heldout"), (kind, item.prompt)
            assert check_alignment(render(item.scene), item.spec).aligned, item.prompt
    assert {len(i.scene.objects) for i in eval_prompts("single", 10)} == {1}
    assert {len(i.scene.objects) for i in eval_prompts("multi", 10)} == {2, 3}
    assert all(i.level == "long" and len(i.prompt.split()) >= 25 for i in eval_prompts("long", 5))
    with pytest.raises(ValueError, match="unknown kind"):
        eval_prompts("colours", 3)
