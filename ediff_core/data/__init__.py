"""Shapes World: the procedural captioned images ediff-mini is trained on (see shapes_world.py)."""

from .captions import CELL_NAMES, RELATIONS, captions, cell_of, relation
from .shapes_world import (
    COLORS,
    HELD_OUT,
    SHAPES,
    SIZES,
    SPLITS,
    STYLES,
    Scene,
    ShapeObject,
    ShapesWorldDataset,
    collate,
    make_scene,
    render,
    render_batch,
    sample_scene,
    split_of,
    split_seed,
)

__all__ = [
    "CELL_NAMES", "COLORS", "HELD_OUT", "RELATIONS", "SHAPES", "SIZES", "SPLITS", "STYLES",
    "Scene", "ShapeObject", "ShapesWorldDataset", "captions", "cell_of", "collate", "make_scene",
    "relation", "render", "render_batch", "sample_scene", "split_of", "split_seed",
]
