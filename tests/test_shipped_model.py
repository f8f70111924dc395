"""The embedded default, checkpoints/ediff-mini, loads through the real code and generates."""

import json
from pathlib import Path

import numpy as np

from ediff_core.core.model_folder import default_model_path
from ediff_core.pipeline import EDiffPipeline
from ediff_core.core.request import GenerationRequest

FOLDER = default_model_path()


def test_shipped_folder_is_safetensors_only_and_small():
    files = [p for p in FOLDER.rglob("*") if p.is_file() and "_train" not in p.parts]
    assert not [p for p in files if p.suffix in (".pt", ".pth", ".bin", ".ckpt", ".pkl")]
    weights = [p for p in files if p.suffix == ".safetensors"]
    assert weights and sum(p.stat().st_size for p in files) <= 40 * 1024 * 1024


def test_shipped_model_generates_64px_deterministically():
    pipe = EDiffPipeline.from_pretrained()
    info = pipe.info()
    assert info["resolutions"] == [32, 64]
    assert len(info["experts"]) == 3
    req = GenerationRequest("a red circle and a blue star", seed=11, steps=8, sr_steps=4)
    a, b = pipe(req), pipe(req)
    assert a.images[0].size == (64, 64)
    assert np.array_equal(np.asarray(a.images[0]), np.asarray(b.images[0]))
    idx = json.loads((FOLDER / "model_index.json").read_text())
    assert idx["name"] == "ediff-mini"
