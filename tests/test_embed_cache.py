"""`embed` precomputes T5/CLIP embeddings; `train --embeddings` reads them: the same loss as encoding
on the fly, to fp32 tolerance; a cache from other encoder weights is refused."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from ediff_core.tools.cli import main


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "folder"
    assert main(["export-data", "--out", str(out), "--n", "10"]) == 0
    return out


@pytest.fixture
def run_dir(encoders_run):
    return encoders_run


def _embed(dataset, run_dir, out, *extra):
    assert main(["embed", "--data", str(dataset), "--out", str(out), "--t5", str(run_dir / "t5"), "--clip", str(run_dir / "clip"),
                 "--shard-samples", "4", "--device", "cpu", *extra]) == 0
    return out


def test_the_cache_gives_the_on_the_fly_loss_for_the_same_batch(dataset, run_dir, tmp_path, tiny_pipe):
    from ediff_core.core.conditioning import drop_embeddings
    from ediff_core.data.spec import collate, open_data
    from ediff_core.tools.embed_cache import EmbeddingCache
    from ediff_core.core.loss import EDMLoss
    from ediff_core.core.networks import build_unet, denoiser
    from ediff_core.tools.training import PRESETS

    cache_dir = _embed(dataset, run_dir, tmp_path / "cache")
    index = json.loads((cache_dir / "index.json").read_text())
    assert index["shards"] == 3 and len(index["samples"]) == 10 and index["data"]["samples"] == 10
    assert sum(v[3] for v in index["samples"].values()) == 30  # every caption of the lists, each its own row
    assert len(list(cache_dir.glob("embeddings-*.safetensors"))) == 3
    cfg = PRESETS["tiny"]
    stream = iter(open_data(str(dataset)).stream(cfg, seed=0, start_step=0))
    batch = collate([next(stream) for _ in range(6)])
    enc = tiny_pipe.encoders
    fly = enc.encode(batch["caption"], (batch["image"] + 1) / 2)
    cached = EmbeddingCache(cache_dir).lookup(batch["key"], batch["caption_index"])
    for name in ("t5_tokens", "clip_tokens", "clip_pooled", "image_embed"):
        torch.testing.assert_close(getattr(cached, name), getattr(fly, name), rtol=1e-5, atol=1e-6)
    assert torch.equal(cached.t5_mask, fly.t5_mask) and torch.equal(cached.clip_mask, fly.clip_mask)
    torch.manual_seed(0)
    D = denoiser(build_unet("tiny", 32, enc.dims))
    loss = EDMLoss()

    def value(cond):
        g = torch.Generator().manual_seed(7)
        return loss(D, batch["base"], drop_embeddings(cond, generator=g), g).mean()

    torch.testing.assert_close(value(cached), value(fly), rtol=1e-5, atol=1e-6)


def test_training_from_the_cache_equals_training_on_the_fly(dataset, run_dir, tmp_path):
    """Same data, seed and steps: the weights trained from the cache are those trained with the encoders."""
    from ediff_core.tools.training import run

    cache_dir = _embed(dataset, run_dir, tmp_path / "cache")
    fly_dir = tmp_path / "fly"
    shutil.copytree(run_dir, fly_dir)
    kw = {"overrides": {"base_steps": 3, "threads": 1}, "log": lambda m: None, "data": str(dataset)}
    run("tiny", "base", fly_dir, **kw)
    run("tiny", "base", run_dir, embeddings=str(cache_dir), **kw)
    a = load_file(str(fly_dir / "_train/base/shared/state.safetensors"))
    b = load_file(str(run_dir / "_train/base/shared/state.safetensors"))
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6)
    record = json.loads((run_dir / "_train/run.json").read_text())
    assert record["encoders"]["embeddings"] == str(cache_dir)
    assert record["encoders"]["fingerprint"] == json.loads((cache_dir / "index.json").read_text())["fingerprint"]


def test_a_cache_from_other_encoder_weights_is_refused(dataset, run_dir, tmp_path, capsys):
    from ediff_core.tools.tiny import tiny_clip, tiny_t5

    other = tmp_path / "other"
    tiny_t5(other / "t5", seed=1)
    tiny_clip(other / "clip", seed=1)
    cache_dir = _embed(dataset, other, tmp_path / "cache")
    out = tmp_path / "out"
    capsys.readouterr()
    # The run's encoders named by flag: refused before anything is written.
    assert main(["train", "--preset", "tiny", "--stage", "base", "--out", str(out), "--data", str(dataset), "--embeddings", str(cache_dir),
                 "--t5", str(run_dir / "t5"), "--clip", str(run_dir / "clip")]) == 2
    err = capsys.readouterr().err
    assert "embeddings: " in err and "was made with other encoder weights" in err and "Re-run embed with them" in err
    assert not out.exists()
    # The run folder's own (trained) encoders: refused as well.
    assert main(["train", "--preset", "tiny", "--stage", "base", "--out", str(run_dir), "--data", str(dataset), "--embeddings", str(cache_dir)]) == 2
    assert "was made with other encoder weights" in capsys.readouterr().err
    assert sorted(p.name for p in run_dir.iterdir()) == ["clip", "t5"]
    # Shapes World is procedural: there is nothing to cache.
    assert main(["embed", "--data", "shapes", "--out", str(tmp_path / "c2"), "--t5", str(run_dir / "t5"), "--clip", str(run_dir / "clip")]) == 2
    assert "export-data" in capsys.readouterr().err
