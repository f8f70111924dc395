"""``ediff_core.core.images``: generated PNGs are a function of (model, settings, seed) only."""

import json

from PIL import Image

from ediff_core.core.images import save_png
from ediff_core.core.request import GenerationRequest


def test_same_seed_gives_byte_identical_png_files(tiny_pipe, tmp_path):
    req = GenerationRequest("a red circle", seed=5)
    paths = []
    for k in range(2):
        result = tiny_pipe(req)
        assert "total" in result.timings and "timings" in result.metadata[0]  # kept on the result
        paths.append(save_png(result.images[0], tmp_path / f"{k}.png", result.metadata[0]))
    assert paths[0].read_bytes() == paths[1].read_bytes()
    meta = json.loads(Image.open(paths[0]).text["ediff"])
    assert meta["seed"] == 5 and "timings" not in meta
