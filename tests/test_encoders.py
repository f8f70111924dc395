"""Encoders end to end: tiny real T5 and open_clip models saved in their real folder layouts and
loaded through `ediff_core.encoders.loading`, no mocks."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ediff_core.encoders import ImageEncoder, TextEmbedding, TextEncoder, load_clip, load_text_encoder  # noqa: E402
from ediff_core.encoders.base import phrase_char_span  # noqa: E402

PROMPT = "A Red-Circle and two BLUE stars, at the top left!"


def _captions(n_scenes: int, split: str = "train") -> list[str]:
    from ediff_core.encoders.train_mini import caption_corpus

    return caption_corpus(split, n_scenes)


@pytest.fixture(scope="module")
def t5_tokenizer():
    from ediff_core.encoders.t5 import train_t5_tokenizer

    return train_t5_tokenizer(_captions(70)[:210], vocab_size=300, extra_ids=8, max_length=24)


@pytest.fixture(scope="module")
def t5_folder(tmp_path_factory, t5_tokenizer):
    """A tiny random T5 encoder in Hugging Face layout (fp16 safetensors) with its tokenizer."""
    from transformers import T5Config, T5EncoderModel

    folder = tmp_path_factory.mktemp("tiny-t5")
    config = T5Config(vocab_size=len(t5_tokenizer), d_model=16, d_kv=8, num_heads=2, d_ff=32, num_layers=2,
                      feed_forward_proj="gated-gelu", tie_word_embeddings=False, pad_token_id=0,
                      eos_token_id=1, decoder_start_token_id=0)
    torch.manual_seed(0)
    model = T5EncoderModel(config).half()
    model.save_pretrained(str(folder))
    t5_tokenizer.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def t5(t5_folder):
    return load_text_encoder("t5", str(t5_folder), "cpu")


TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="module")
def clip_pair(tmp_path_factory):
    """(original open_clip model, its loaded CLIPEncoders) from an fp32 open_clip folder."""
    import open_clip

    from ediff_core.encoders.clip import save_open_clip_folder

    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY_CLIP).eval()
    folder = save_open_clip_folder(model, TINY_CLIP, tmp_path_factory.mktemp("tiny-clip"), dtype=torch.float32)
    return model, load_clip(str(folder), "cpu")


# ---- phrase matching --------------------------------------------------------------------------
def test_phrase_char_span_ignores_case_punctuation_and_plural():
    assert phrase_char_span(PROMPT, "red circle") == (2, 12)
    assert PROMPT[slice(*phrase_char_span(PROMPT, "blue star"))] == "BLUE stars"
    assert phrase_char_span(PROMPT, "top-left") is not None
    assert phrase_char_span("a reddish circle", "red") is None
    assert phrase_char_span(PROMPT, "   ") is None


# ---- T5 ------------------------------------------------------------------------------------------
def test_mini_t5_tokenizer_round_trip(t5_tokenizer):
    text = "a big red circle at the top left and two tiny blue stars. a magenta hexagon!"
    ids = t5_tokenizer(text)["input_ids"]
    assert ids[-1] == t5_tokenizer.eos_token_id and t5_tokenizer.unk_token_id not in ids
    assert t5_tokenizer.decode(ids, skip_special_tokens=True) == text
    assert t5_tokenizer("A BIG Red Circle")["input_ids"] == t5_tokenizer("a big red circle")["input_ids"]
    assert (t5_tokenizer.pad_token_id, t5_tokenizer.eos_token_id, t5_tokenizer.unk_token_id) == (0, 1, 2)
    assert t5_tokenizer.convert_tokens_to_ids("<extra_id_0>") == len(t5_tokenizer) - 1
    assert len(t5_tokenizer.convert_ids_to_tokens(t5_tokenizer("red circle")["input_ids"])) == 3  # whole words


def test_t5_encoder_shapes_mask_padding(t5):
    assert isinstance(t5, TextEncoder) and (t5.name, t5.max_length, t5.dim, t5.pooled_dim) == ("t5", 24, 16, 0)
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in t5.model.parameters())
    out = t5.encode(["a red circle", PROMPT])
    assert isinstance(out, TextEmbedding) and out.pooled is None
    assert out.tokens.shape == (2, 24, 16) and out.tokens.dtype == torch.float32
    assert out.mask.dtype == torch.bool and out.mask.shape == (2, 24)
    n_real = len(t5.tokenizer("a red circle")["input_ids"])  # three words and EOS
    assert n_real == 4 and out.mask[0].tolist() == [True] * 4 + [False] * 20
    # Padding does not leak into real tokens: alone or batched, the same features.
    alone = t5.encode(["a red circle"])
    torch.testing.assert_close(alone.tokens[0, :4], out.tokens[0, :4], atol=1e-5, rtol=1e-5)


def test_t5_weights_are_the_saved_ones_upcast(t5_folder, t5):
    from safetensors.torch import load_file

    saved = load_file(str(t5_folder / "model.safetensors"))
    assert saved["shared.weight"].dtype == torch.float16
    torch.testing.assert_close(t5.model.shared.weight, saved["shared.weight"].float())


def test_t5_token_strings_and_phrase_positions(t5):
    strings = t5.token_strings(PROMPT)
    assert len(strings) == t5.max_length and strings[-1] == "<pad>" and "</s>" in strings
    covered = lambda phrase: "".join(strings[i] for i in t5.phrase_token_positions(PROMPT, phrase))  # noqa: E731
    assert covered("blue star") == "bluestars"  # the whole last word, however it is split
    assert covered("RED circle") == "red-circle"
    assert covered("top, left") == "topleft"
    assert covered("a") == "a"  # the first whole-word "a", not the "a" inside "at"


def test_phrase_not_in_prompt_error(t5, clip_pair):
    for encoder in (t5, clip_pair[1].text):
        with pytest.raises(ValueError) as e:
            encoder.phrase_token_positions("a red circle", "blue star")
        assert str(e.value) == "phrase 'blue star' is not in the prompt 'a red circle'"


def test_t5_truncation(t5):
    long = " ".join(["red circle"] * 30)
    assert t5.truncated(long) and not t5.truncated("a red circle")
    out = t5.encode([long])
    assert bool(out.mask.all())
    assert t5.token_strings(long)[-1] == "</s>"


# ---- CLIP ----------------------------------------------------------------------------------------
def test_clip_text_tokens_mask_and_pooled(clip_pair):
    model, clip = clip_pair
    text = clip.text
    assert isinstance(text, TextEncoder) and (text.name, text.max_length, text.dim, text.pooled_dim) == ("clip", 77, 32, 16)
    prompts = ["a red circle", PROMPT]
    out = text.encode(prompts)
    assert out.tokens.shape == (2, 77, 32) and out.pooled.shape == (2, 16)
    assert out.mask.dtype == torch.bool and out.mask[0].tolist() == [True] * 5 + [False] * 72  # SOT a red circle EOT
    ids = text.tokenize(prompts)
    with torch.no_grad():
        reference = model.encode_text(ids)
    torch.testing.assert_close(out.pooled, reference, atol=1e-5, rtol=1e-5)
    eot = ids.argmax(dim=-1)
    projected = out.tokens[torch.arange(2), eot] @ clip.model.text_projection
    torch.testing.assert_close(projected, out.pooled, atol=1e-5, rtol=1e-5)


def test_clip_token_strings_and_phrase_positions(clip_pair):
    text = clip_pair[1].text
    strings = text.token_strings(PROMPT)
    assert len(strings) == 77 and strings[0] == "<start_of_text>" and strings[-1] == "<pad>"
    assert [strings[i] for i in text.phrase_token_positions(PROMPT, "blue star")] == ["blue", "stars"]
    assert [strings[i] for i in text.phrase_token_positions(PROMPT, "red circle")] == ["red", "-", "circle"]
    # A word BPE splits into several pieces is covered whole.
    prompt = "an unbelievably purple héart"
    pos = text.phrase_token_positions(prompt, "Héart")
    assert "".join(text.token_strings(prompt)[i] for i in pos) == "héart"
    assert text.tokenizer.encode(PROMPT) == text.tokenize([PROMPT])[0, 1 : len(text.tokenizer.encode(PROMPT)) + 1].tolist()
    long = "red circle " * 40
    assert text.truncated(long) and not text.truncated(PROMPT)
    assert text.phrase_token_positions(long, "red circle") == [1, 2]


def test_clip_image_encoder_any_size(clip_pair):
    model, clip = clip_pair
    image = clip.image
    assert isinstance(image, ImageEncoder) and (image.dim, image.image_size) == (16, 32)
    x = torch.rand(2, 3, 32, 32)
    mean = torch.tensor(clip.image.mean.flatten().tolist()).view(1, 3, 1, 1)
    std = torch.tensor(clip.image.std.flatten().tolist()).view(1, 3, 1, 1)
    with torch.no_grad():
        reference = model.encode_image((x - mean) / std)
    torch.testing.assert_close(image.encode_image(x), reference, atol=1e-5, rtol=1e-5)
    assert image.encode_image(torch.rand(3, 3, 50, 90)).shape == (3, 16)
    with pytest.raises(ValueError, match="B, 3, H, W"):
        image.encode_image(torch.rand(3, 32, 32))


def test_clip_fp16_folder_loads_as_float32(tmp_path):
    import open_clip

    from ediff_core.encoders.clip import save_open_clip_folder

    model = open_clip.CLIP(**TINY_CLIP)
    save_open_clip_folder(model, TINY_CLIP, tmp_path)
    config = json.loads((tmp_path / "open_clip_config.json").read_text())
    assert set(config) == {"model_cfg", "preprocess_cfg"} and "mean" in config["preprocess_cfg"]
    clip = load_clip(tmp_path)
    assert all(p.dtype == torch.float32 for p in clip.model.parameters())
    torch.testing.assert_close(clip.model.token_embedding.weight, model.token_embedding.weight.half().float())


# ---- loading errors ------------------------------------------------------------------------------
def test_missing_folder_and_files_are_named(tmp_path, t5_folder):
    missing = tmp_path / "nowhere" / "t5"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_text_encoder("t5", str(missing))
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        load_text_encoder("t5", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"open_clip_config\.json"):
        load_clip(str(tmp_path))
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP}))
    with pytest.raises(FileNotFoundError, match=r"open_clip_model\.safetensors") as e:
        load_clip(str(tmp_path))
    assert str(tmp_path) in str(e.value)
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"preprocess_cfg": {}}))
    with pytest.raises(ValueError, match="model_cfg"):
        load_clip(str(tmp_path))
    no_weights = tmp_path / "t5-bin"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((t5_folder / "config.json").read_text())
    (no_weights / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="model.safetensors.*pickled"):
        load_text_encoder("t5", str(no_weights))
    with pytest.raises(ValueError, match="kind"):
        load_text_encoder("bert", str(t5_folder))


def test_offline_hub_id_gives_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    for load in (lambda: load_text_encoder("t5", "google/t5-v1_1-xxl"),
                 lambda: load_clip("timm/vit_large_patch14_clip_224.openai")):
        with pytest.raises(FileNotFoundError) as e:
            load()
        assert "HF_HUB_OFFLINE" in str(e.value) and "/" in str(e.value).split("'")[1]


# ---- mini pretraining ----------------------------------------------------------------------------
def test_span_corruption_hides_and_restores_the_sequence():
    from ediff_core.encoders.train_mini import random_spans_noise_mask, span_corrupt

    rng = np.random.default_rng(0)
    masks = [random_spans_noise_mask(60, rng) for _ in range(200)]
    assert all(m.sum() == 9 and not m[0] for m in masks)  # 15% of 60
    spans = sum(int(np.sum(m[1:] & ~m[:-1])) for m in masks)
    assert 2.5 < 9 * 200 / spans < 3.5  # mean span length 3
    ids, sentinels, eos = list(range(10, 50)), [99, 98, 97, 96, 95], 1
    inputs, targets = span_corrupt(ids, rng, sentinels, eos)
    assert inputs[-1] == eos and targets[-1] == eos and targets[0] == 99
    restored, it = [], iter(targets[:-1])
    spans_of = {}
    current = None
    for t in it:
        if t in sentinels:
            current = t
            spans_of[t] = []
        else:
            spans_of[current].append(t)
    for t in inputs[:-1]:
        restored += spans_of[t] if t in sentinels else [t]
    assert restored == ids


def test_hard_negative_captions_change_one_fact():
    import random
    import re

    from ediff_core.data import HELD_OUT
    from ediff_core.encoders.train_mini import perturb_caption

    rng = random.Random(0)
    seen = set()
    for _ in range(60):
        out = perturb_caption("one small orange triangle on the left and a red star", rng)
        if out is None:  # e.g. "red star" -> "green star", a held-out composition
            continue
        assert out != "one small orange triangle on the left and a red star"
        assert not any(f"{c} {sh}" in out for c, sh in HELD_OUT)
        assert not re.search(r"\ba [aeiou]", out) and not re.search(r"\ban [^aeiou]", out)  # articles agree
        seen.add(out)
        if out.startswith(("two", "three", "four")):
            assert "triangles" in out  # the noun agrees with the new count
    assert "one small orange triangle on the right and a red star" in seen
    assert any(" red " not in s and "orange" in s for s in seen)  # colour swaps happen
    assert all("purple heart" not in (perturb_caption("a purple star", random.Random(i)) or "") for i in range(50))
    assert perturb_caption("there are objects", rng) is None


def test_train_mini_encoders_tiny_runs_load_through_the_loaders(tmp_path):
    from ediff_core.encoders.train_mini import train_mini_clip, train_mini_t5

    logs: list[str] = []
    t5_figures = train_mini_t5(tmp_path / "t5", steps=2, batch_size=8, n_scenes=60, log=logs.append, n_val_scenes=16)
    t5 = load_text_encoder("t5", tmp_path / "t5")
    assert t5.max_length == t5_figures["max_length"] and t5.max_length % 16 == 0
    assert t5.encode(["a red circle"]).tokens.shape == (1, t5.max_length, 128)
    assert np.isfinite(t5_figures["held_out_span_corruption_loss"])
    clip_figures = train_mini_clip(tmp_path / "clip", steps=2, batch_size=8, n_scenes=16, log=logs.append, n_val=16)
    clip = load_clip(tmp_path / "clip")
    assert clip.image.image_size == 64 and clip.image.encode_image(torch.rand(1, 3, 64, 64)).shape == (1, 128)
    assert clip_figures["steps"] == 2 and any("[clip] step" in line or "top-1" in line for line in logs)
