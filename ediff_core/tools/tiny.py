"""A tiny random eDiff-I saved in the real formats: for tests and for trying the CLI in seconds.

``python -m ediff_core.tools.tiny OUT`` writes a full model folder (tiny T5 in Hugging Face layout,
tiny open_clip model, three base experts, one super-resolution stage) that loads through the
same code as the real model.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from ..core.experts import ExpertEnsemble, ExpertSpec, Interval, three_expert_specs
from ..core.networks import build_unet, denoiser

# A small corpus so the tiny tokenizer knows the words tests use.
_WORDS = "a an the one two three four red orange yellow green cyan blue purple pink circle circles square squares triangle triangles star stars heart hearts diamond diamonds small large big tiny left right top bottom center above below of and in on at night paper comic style striped dotted plain background"


def tiny_t5(folder: Path, seed: int = 0) -> None:
    """A random 1-layer T5 encoder with a tokenizer trained on a few words, saved as safetensors."""
    from transformers import T5Config, T5EncoderModel

    from ..encoders.t5 import train_t5_tokenizer

    torch.manual_seed(seed)
    words = _WORDS.split()
    corpus = [" ".join(words[i : i + 6]) for i in range(len(words))] * 4
    tok = train_t5_tokenizer(corpus, vocab_size=120, extra_ids=4, max_length=24)
    cfg = T5Config(vocab_size=len(tok), d_model=32, d_kv=16, d_ff=64, num_layers=1, num_heads=2, feed_forward_proj="gated-gelu", decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    T5EncoderModel(cfg).save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)


def tiny_clip(folder: Path, seed: int = 0) -> None:
    """A random open_clip CLIP (ViT 32 px, 1-layer text tower, shipped BPE) in open_clip layout."""
    import open_clip

    from ..encoders.clip import save_open_clip_folder

    torch.manual_seed(seed)
    cfg = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    model = open_clip.CLIP(**cfg)
    save_open_clip_folder(model, cfg, folder, dtype=torch.float32)


def make_tiny_model_folder(folder: str | Path, with_sr: bool = True, seed: int = 0) -> Path:
    """Writes a complete random model folder and returns its path."""
    from ..core.embed import load_encoder_set
    from ..pipeline import EDiffPipeline, Stage

    folder = Path(folder)
    tiny_t5(folder / "t5", seed)
    tiny_clip(folder / "clip", seed)
    enc = load_encoder_set(str(folder / "t5"), str(folder / "clip"))
    torch.manual_seed(seed)
    specs = three_expert_specs(high_level=2, low_level=2)
    base = Stage("base", 16, ExpertEnsemble([denoiser(build_unet("tiny", 16, enc.dims)) for _ in specs], specs))
    sr = []
    if with_sr:
        sr = [Stage("sr32", 32, ExpertEnsemble([denoiser(build_unet("tiny", 32, enc.dims, super_resolution=True))], [ExpertSpec("single", Interval(0.0, float("inf")))]), aug_sigma=0.1, is_sr=True)]
    pipe = EDiffPipeline(enc, base, sr, name="ediff-tiny-random", defaults={"steps": 4, "sr_steps": 2, "guidance": 2.0})
    pipe.save_pretrained(folder, {"t5": "t5", "clip": "clip"})
    return folder


if __name__ == "__main__":
    print(make_tiny_model_folder(sys.argv[1] if len(sys.argv) > 1 else "tiny-model"))
