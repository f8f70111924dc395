"""Shapes World data: determinism, spec constants, layout rules, held-out pairs, captions, splits."""

import re
import time

import numpy as np
import pytest
import torch

from ediff_core.data import (
    COLORS, HELD_OUT, SPLITS, STYLES, ShapesWorldDataset, captions, collate, make_scene, render,
    render_batch, sample_scene, split_of, split_seed,
)
from ediff_core.data.captions import RELATION_MARGIN, STYLE_PHRASES, cell_of, relation
from ediff_core.data.shapes_world import CELL_MARGIN, GAP, MARGIN, SIZES


def test_palette_and_sizes_match_spec():
    assert COLORS == {
        "red": (215, 38, 38), "orange": (240, 135, 20), "yellow": (240, 205, 20),
        "green": (40, 155, 60), "cyan": (20, 180, 200), "blue": (35, 85, 215),
        "purple": (135, 55, 185), "pink": (235, 105, 175),
    }
    assert SIZES == {"small": 0.08, "large": 0.15}
    assert set(STYLES) == {"plain", "paper", "striped", "dotted", "night", "comic"}
    assert HELD_OUT == {("purple", "heart"), ("cyan", "triangle"), ("yellow", "square"), ("green", "star")}


def test_same_seed_same_bytes_and_captions():
    for seed in (0, 7, 123456, split_seed("test", 5)):
        a, b = sample_scene(seed), sample_scene(seed)
        assert a == b
        assert render(a).tobytes() == render(b).tobytes()
        assert captions(a) == captions(b)
    images = render_batch(range(20))
    assert images.shape == (20, 64, 64, 3) and images.dtype == np.uint8
    assert len({im.tobytes() for im in images}) == 20


def test_every_style_is_deterministic_and_distinct():
    seen = {}
    for seed in range(200):
        scene = sample_scene(seed)
        if scene.style not in seen:
            seen[scene.style] = scene
    assert set(seen) == set(STYLES)
    for scene in seen.values():  # grain and night stars come from the scene seed
        assert render(scene).tobytes() == render(sample_scene(scene.seed)).tobytes()
        other = make_scene([(o.shape, o.color, o.size, o.cx, o.cy) for o in scene.objects], scene.style, seed=scene.seed + 1)
        differs = render(other).tobytes() != render(scene).tobytes()
        assert differs == (scene.style in ("paper", "night")), scene.style
    grain = np.asarray(render(make_scene([], "paper", seed=3)), dtype=np.float64).std(axis=(0, 1))
    assert np.all((5.0 < grain) & (grain < 7.0)), grain  # spec: σ ≈ 6


def test_layout_margins_gaps_and_counts():
    counts = set()
    for seed in range(300):
        objs = sample_scene(seed).objects
        counts.add(len(objs))
        for o in objs:
            x0, y0, x1, y1 = o.box
            assert min(x0, y0) >= MARGIN - 1e-9 and max(x1, y1) <= 1 - MARGIN + 1e-9
            for v in (o.cx, o.cy):  # our own rule: centres stay clear of the grid lines
                assert abs(v - 1 / 3) >= CELL_MARGIN and abs(v - 2 / 3) >= CELL_MARGIN
        for i, a in enumerate(objs):
            for b in objs[i + 1:]:
                gap = max(abs(a.cx - b.cx), abs(a.cy - b.cy)) - a.r - b.r
                assert gap >= GAP - 1e-9
    assert counts == {1, 2, 3, 4}


def test_held_out_pairs_never_in_training():
    words = {f"{c} {s}" for c, s in HELD_OUT}
    for seed in range(2000):
        scene = sample_scene(seed)
        assert not {(o.color, o.shape) for o in scene.objects} & HELD_OUT
        text = " ".join(captions(scene).values())
        assert not any(re.search(rf"\b{w}s?\b", text) for w in words), text
    test_pairs = {(o.color, o.shape) for i in range(500) for o in sample_scene(split_seed("test", i)).objects}
    assert HELD_OUT <= test_pairs  # the test split does contain them
    scene = sample_scene(split_seed("test", 3), include=("purple", "heart"))
    assert ("purple", "heart") in {(o.color, o.shape) for o in scene.objects}
    with pytest.raises(ValueError, match="test split"):
        sample_scene(3, include=("purple", "heart"))


def test_caption_lengths_and_vocabulary():
    styled = {"short": 0, "medium": 0}
    n = 600
    for seed in range(n):
        scene = sample_scene(seed)
        caps = captions(scene)
        assert len(caps["short"].split()) <= 12, caps["short"]
        assert 25 <= len(caps["long"].split()) <= 60, caps["long"]
        for o in scene.objects:
            for text in caps.values():
                assert o.color in text and o.shape in text
        for k in styled:
            styled[k] += any(p in caps[k] for p in STYLE_PHRASES[scene.style])
    for k, v in styled.items():  # "about a third"
        assert 0.25 < v / n < 0.42, (k, v / n)


def test_counts_and_plurals():
    scene = make_scene([("circle", "red", "small", 0.2, 0.2), ("circle", "red", "small", 0.8, 0.2),
                        ("star", "blue", "large", 0.5, 0.75)], "plain", seed=1)
    short = captions(scene)["short"]
    assert "two red circles" in short and ("a blue star" in short or "one blue star" in short)


def test_cells_and_relations_follow_the_spec_rule():
    assert cell_of(0.1, 0.1) == "top left" and cell_of(0.5, 0.5) == "center" and cell_of(0.9, 0.5) == "right"
    a, b = make_scene([("circle", "red", "small", 0.2, 0.5), ("square", "blue", "small", 0.4, 0.55)]).objects
    assert relation(a, b) == "left of" and relation(b, a) == "right of"
    a, b = make_scene([("circle", "red", "small", 0.2, 0.5), ("square", "blue", "small", 0.34, 0.55)]).objects
    assert relation(a, b) is None  # only 0.14 W apart
    a, b = make_scene([("circle", "red", "small", 0.3, 0.2), ("square", "blue", "small", 0.5, 0.45)]).objects
    assert relation(a, b) == "above" and relation(b, a) == "below"
    # long captions only state relations that hold with the margin
    for seed in range(200):
        scene = sample_scene(seed)
        long = captions(scene)["long"]
        for a in scene.objects:
            for b in scene.objects:
                if a is b:
                    continue
                for rel, phrases in (("left of", ("is left of", "is to the left of")), ("above", ("is above",))):
                    for p in phrases:
                        if f"the {a.color} {a.shape} {p} the {b.color} {b.shape}." in long.lower():
                            assert relation(a, b, RELATION_MARGIN) == rel


def test_splits_are_disjoint_and_checked():
    ranges = list(SPLITS.values())
    for i, a in enumerate(ranges):
        for b in ranges[i + 1:]:
            assert a.stop <= b.start or b.stop <= a.start
    assert split_of(split_seed("validation", 0)) == "validation"
    with pytest.raises(ValueError, match="belongs to 'train'"):
        sample_scene(5, split="test")
    with pytest.raises(ValueError):
        split_seed("test", len(SPLITS["test"]))


def test_dataset_items_and_render_speed():
    ds = ShapesWorldDataset("train", size=32, length=10)
    item = ds[3]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert -1.0 <= item["image"].min() and item["image"].max() <= 1.0
    assert item["seed"] == 3 and item["scene"] == sample_scene(3)
    batch = collate([ds[i] for i in range(4)])
    assert batch["image"].shape == (4, 3, 32, 32) and len(batch["captions"]["long"]) == 4
    val = ShapesWorldDataset("validation", length=2)
    assert split_of(val[1]["seed"]) == "validation"
    start = time.perf_counter()
    render_batch(range(100), 64)
    per_image = (time.perf_counter() - start) / 100
    assert per_image < 0.02, f"{per_image * 1e3:.1f} ms per 64-px image"
