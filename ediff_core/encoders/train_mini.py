"""Pretrain the ediff-mini encoders on Shapes World captions and renders (CPU-sized).

eDiff-I uses frozen pretrained T5-XXL and CLIP ViT-L/14 (§4.2). Nothing can be downloaded at
run time, so ediff-mini ships tiny stand-ins trained with the same objectives:

- **mini-T5**: a SentencePiece-unigram tokenizer trained on the captions, and a small T5 v1.1
  pretrained with T5's span corruption (15% noise density, mean span 3, sentinels); only the
  encoder is kept (Hugging Face layout, safetensors).
- **mini-CLIP**: an open_clip CLIP (ViT for 64x64 images, the shipped BPE text tower) trained
  contrastively on 64-px renders paired with one of their three captions (open_clip layout).

Usage::

    python -m ediff_core.encoders.train_mini --out checkpoints/ediff-mini \
        --t5-steps 100000 --t5-seconds 210 --clip-steps 100000 --clip-seconds 390

(the shipped encoders: time-budgeted, ~11 minutes on the 2-core CPU; see each folder's training.json).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

Log = Callable[[str], None]

# mini-T5: 1.17 M parameters while pretraining (the 0.71 M encoder is kept). Gated-GELU, untied
# embeddings and no dropout, like T5 v1.1 (dropout off: the run is far too short to overfit).
T5_CONFIG = dict(d_model=128, d_kv=32, num_heads=4, d_ff=256, num_layers=4, num_decoder_layers=2,
                 feed_forward_proj="gated-gelu", dropout_rate=0.0, tie_word_embeddings=False,
                 relative_attention_num_buckets=32, relative_attention_max_distance=128)
T5_EXTRA_IDS = 32  # sentinels; a 80-token caption has at most ~4 noise spans
NOISE_DENSITY = 0.15  # T5's span corruption (Raffel et al. 2020, §3.1.4)
MEAN_SPAN = 3.0

# mini-CLIP: ~3.7 M parameters, 3.2 M of them the 49408 x 64 BPE token table. The ViT is 96 wide
# and 3 deep (not 128 x 4): on 2 shared CPU cores that is ~2x the steps in the same minutes.
MINI_CLIP_NAME = "ediff-mini-clip"
MINI_CLIP_CONFIG = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 64, "patch_size": 8, "width": 96, "layers": 3, "head_width": 32, "mlp_ratio": 4.0},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 3},
}


def _print(msg: str) -> None:
    print(msg, flush=True)


class Schedule:
    """Training progress in [0, 1] by steps or wall clock, whichever runs out first, and the
    learning rate at that progress (linear warm-up, cosine decay to 10% of the peak).

    Scheduling by time keeps a run inside its budget on a CPU shared with other work; the
    number of steps actually taken is reported.
    """

    def __init__(self, steps: int, max_seconds: float | None, peak_lr: float, warmup: float):
        self.steps, self.max_seconds, self.peak_lr, self.warmup = steps, max_seconds, peak_lr, warmup
        self.t0 = time.time()

    def progress(self, step: int) -> float:
        by_time = (time.time() - self.t0) / self.max_seconds if self.max_seconds else 0.0
        return min(1.0, max(step / self.steps, by_time))

    def lr(self, frac: float) -> float:
        if frac < self.warmup:
            return self.peak_lr * max(frac / self.warmup, 0.01)
        t = (frac - self.warmup) / (1 - self.warmup)
        return self.peak_lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))

    def report(self, log: Log, what: str, step: int, loss: float) -> None:
        elapsed = time.time() - self.t0
        frac = self.progress(step)
        eta = elapsed / frac - elapsed if frac > 0 else float("nan")
        log(f"[{what}] step {step} ({100 * frac:.0f}%)  loss {loss:.4f}  {elapsed / max(1, step):.3f} s/step  "
            f"ETA {eta:.0f} s")


def caption_corpus(split: str, n_scenes: int, offset: int = 0) -> list[str]:
    """Short, medium and long captions of `n_scenes` Shapes World scenes of `split`."""
    from ediff_core.data import captions, sample_scene, split_seed

    out: list[str] = []
    for i in range(offset, offset + n_scenes):
        c = captions(sample_scene(split_seed(split, i)))
        out += [c["short"], c["medium"], c["long"]]
    return out


# ---- mini-T5 -------------------------------------------------------------------------------------
def random_spans_noise_mask(length: int, rng: np.random.Generator, noise_density: float = NOISE_DENSITY,
                            mean_span: float = MEAN_SPAN) -> np.ndarray:
    """T5's noise mask: about `noise_density` of `length` tokens in spans of mean `mean_span`.

    Returns a (length,) bool array, True for corrupted tokens; it starts with a clean token.
    """
    num_noise = min(max(int(round(length * noise_density)), 1), length - 1)
    num_spans = max(1, min(int(round(num_noise / mean_span)), num_noise, length - num_noise))

    def segments(n_items: int, n_segs: int) -> np.ndarray:  # random composition of n_items into n_segs parts
        cuts = np.sort(rng.choice(np.arange(1, n_items), size=n_segs - 1, replace=False)) if n_segs > 1 else []
        return np.diff(np.concatenate([[0], cuts, [n_items]])).astype(int)

    noise, clean = segments(num_noise, num_spans), segments(length - num_noise, num_spans)
    mask = np.zeros(length, dtype=bool)
    pos = 0
    for c, n in zip(clean, noise):
        pos += c
        mask[pos : pos + n] = True
        pos += n
    return mask


def span_corrupt(ids: list[int], rng: np.random.Generator, sentinels: list[int], eos: int) -> tuple[list[int], list[int]]:
    """(inputs, targets) of T5 span corruption: each noise span becomes one sentinel in the
    input, and the target lists each sentinel followed by the tokens it hides; both end in EOS."""
    if len(ids) < 2:
        return ids + [eos], [sentinels[0], eos]
    mask = random_spans_noise_mask(len(ids), rng)
    inputs, targets, k = [], [], -1
    for i, (tok, noisy) in enumerate(zip(ids, mask)):
        if noisy:
            if i == 0 or not mask[i - 1]:
                k += 1
                inputs.append(sentinels[k])
                targets.append(sentinels[k])
            targets.append(tok)
        else:
            inputs.append(tok)
    return inputs + [eos], targets + [eos]


def _t5_batch(seqs: list[list[int]], rng: np.random.Generator, sentinels: list[int], eos: int, pad: int) -> dict:
    pairs = [span_corrupt(s, rng, sentinels, eos) for s in seqs]
    li, lt = max(len(p[0]) for p in pairs), max(len(p[1]) for p in pairs)
    inputs = torch.full((len(pairs), li), pad, dtype=torch.long)
    labels = torch.full((len(pairs), lt), -100, dtype=torch.long)
    for b, (x, y) in enumerate(pairs):
        inputs[b, : len(x)] = torch.tensor(x)
        labels[b, : len(y)] = torch.tensor(y)
    return {"input_ids": inputs, "attention_mask": (inputs != pad).long(), "labels": labels}


def train_mini_t5(out_dir: str | Path, steps: int = 1500, batch_size: int = 128, seed: int = 0,
                  log: Log = _print, lr: float = 3e-3, n_scenes: int = 20000, max_seconds: float | None = None,
                  n_val_scenes: int = 512) -> dict:
    """Train the mini-T5 tokenizer and encoder; save the encoder (fp16 safetensors) and tokenizer.

    Args:
        out_dir: folder for the Hugging Face layout (config.json, model.safetensors, tokenizer).
        steps: most optimizer steps; `max_seconds`, if set, may end training earlier.
        batch_size: captions per step.
        seed: seeds the model init, caption sampling and corruption.
        log: receives the progress lines.
        lr: peak AdamW learning rate.
        n_scenes: training scenes; each gives three captions.
        max_seconds: wall-clock budget of the optimisation loop (None: steps only).
        n_val_scenes: validation scenes whose three captions give the held-out loss.

    Returns the figures (params, max_length, steps, seconds, held-out span-corruption loss).
    """
    from transformers import T5Config, T5EncoderModel, T5ForConditionalGeneration

    from ediff_core.encoders.t5 import train_t5_tokenizer

    out_dir = Path(out_dir)
    t_start = time.time()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    corpus = caption_corpus("train", n_scenes)
    val_corpus = caption_corpus("validation", n_val_scenes)
    tokenizer = train_t5_tokenizer(corpus, extra_ids=T5_EXTRA_IDS, max_length=1024)  # L is set below
    seqs = tokenizer(corpus, add_special_tokens=False)["input_ids"]
    val_seqs = tokenizer(val_corpus, add_special_tokens=False)["input_ids"]
    longest = max(len(s) for s in seqs[2::3]) + 1  # longest long caption, with EOS
    max_length = 16 * math.ceil((longest + 8) / 16)  # margin of at least 8 tokens
    tokenizer.model_max_length = max_length
    tokenizer.init_kwargs["model_max_length"] = max_length
    log(f"[t5] tokenizer: {len(tokenizer)} ids ({T5_EXTRA_IDS} sentinels); longest long caption {longest} "
        f"tokens -> max_length {max_length}; {len(corpus)} captions ({time.time() - t_start:.1f} s)")

    sentinels = tokenizer.convert_tokens_to_ids([f"<extra_id_{i}>" for i in range(T5_EXTRA_IDS)])
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    config = T5Config(vocab_size=len(tokenizer), pad_token_id=pad, eos_token_id=eos, decoder_start_token_id=pad,
                      **T5_CONFIG)
    model = T5ForConditionalGeneration(config).train()
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    val_rng = np.random.default_rng(12345)
    val_batches = [_t5_batch(val_seqs[i : i + 256], val_rng, sentinels, eos, pad) for i in range(0, len(val_seqs), 256)]

    def held_out_loss() -> float:
        model.eval()
        with torch.no_grad():
            tot, n = 0.0, 0
            for b in val_batches:
                k = int((b["labels"] != -100).sum())
                tot += float(model(**b).loss) * k
                n += k
        model.train()
        return tot / n

    log(f"[t5] {n_params / 1e6:.2f} M params while pretraining; {torch.get_num_threads()} threads; "
        f"held-out loss at init {held_out_loss():.3f}")
    sched = Schedule(steps, max_seconds, lr, warmup=0.05)
    running, step = None, 0
    while (frac := sched.progress(step)) < 1.0:
        for g in opt.param_groups:
            g["lr"] = sched.lr(frac)
        batch = _t5_batch([seqs[i] for i in rng.integers(0, len(seqs), batch_size)], rng, sentinels, eos, pad)
        loss = model(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        step += 1
        if step % 50 == 0:
            sched.report(log, "t5", step, running)
    train_s = time.time() - sched.t0
    steps = step
    val_loss = held_out_loss()

    encoder = T5EncoderModel(config)
    missing, _ = encoder.load_state_dict(model.state_dict(), strict=False)
    if missing:
        raise RuntimeError(f"encoder weights missing from the pretrained model: {missing}")
    out_dir.mkdir(parents=True, exist_ok=True)
    encoder.half().save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    figures = {
        "tokenizer_ids": len(tokenizer), "max_length": max_length, "longest_long_caption_tokens": longest,
        "params_pretraining": n_params, "params_encoder": sum(p.numel() for p in encoder.parameters()),
        "steps": steps, "batch_size": batch_size, "lr": lr, "train_seconds": round(train_s, 1),
        "seconds_per_step": round(train_s / max(1, steps), 4), "threads": torch.get_num_threads(),
        "held_out_span_corruption_loss": round(val_loss, 4), "held_out_captions": len(val_corpus),
        "total_seconds": round(time.time() - t_start, 1),
    }
    (out_dir / "training.json").write_text(json.dumps(figures, indent=2) + "\n")
    log(f"[t5] held-out span-corruption loss {val_loss:.4f}; saved to {out_dir}")
    return figures


# ---- mini-CLIP -----------------------------------------------------------------------------------
def register_mini_clip_config() -> str:
    """Add the ediff-mini CLIP architecture to open_clip's model registry (call time, not import)."""
    import open_clip

    if MINI_CLIP_NAME not in open_clip.list_models():
        folder = Path(tempfile.mkdtemp(prefix="ediff-open-clip-"))
        (folder / f"{MINI_CLIP_NAME}.json").write_text(json.dumps(MINI_CLIP_CONFIG))
        open_clip.add_model_config(folder)
    return MINI_CLIP_NAME


_COLOURS = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink")
_SHAPES = ("circle", "square", "triangle", "star", "heart", "diamond")
_NUMBERS = ("one", "two", "three", "four")
_FLIPS = ({"left": "right", "right": "left"},
          {"top": "bottom", "bottom": "top", "upper": "lower", "lower": "upper", "above": "below",
           "below": "above", "beneath": "above"})


def perturb_caption(caption: str, rng: random.Random) -> str | None:
    """A hard negative: `caption` with one colour, shape, count or position changed (NegCLIP,
    Yuksekgonul et al. 2023). In-batch negatives differ in everything, so colour alone would
    separate them; these force the towers to read shapes, counts and positions too.
    Returns None when the caption has nothing to change."""
    import re

    words = re.findall(r"[a-z]+", caption.lower())
    options = []
    for vocab in (_COLOURS, _SHAPES, _NUMBERS):
        present = [w for w in vocab if w in words or (vocab is _SHAPES and w + "s" in words)]
        if present:
            options.append((vocab, present))
    flips = [f for f in _FLIPS if any(w in words for w in f)]
    if not options and not flips:
        return None
    pick = rng.randrange(len(options) + len(flips))
    if pick >= len(options):  # mirror every word of one axis (left <-> right, or top <-> bottom)
        flip = flips[pick - len(options)]
        return re.sub(r"\b(" + "|".join(flip) + r")\b", lambda m: flip[m.group(1)], caption, flags=re.IGNORECASE)
    vocab, present = options[pick]
    old = rng.choice(present)
    new = rng.choice([w for w in vocab if w != old])
    if vocab is _NUMBERS:  # keep the noun's number in agreement ("one circle" -> "three circles")
        pattern = r"\b" + old + r"\b((?: [a-z]+){0,2}? )(" + "|".join(_SHAPES) + r")s?\b"
        plural = "" if new == "one" else "s"
        out = re.sub(pattern, lambda m: new + m.group(1) + m.group(2) + plural, caption, count=1, flags=re.IGNORECASE)
    else:
        out = re.sub(r"\b" + old + r"(?=s?\b)", new, caption, count=1, flags=re.IGNORECASE)
    # Keep "a"/"an" right, so grammar gives the negative away nowhere.
    out = re.sub(r"\b([Aa])n? (?=([a-z]))", lambda m: m.group(1) + ("n " if m.group(2) in "aeiou" else " "), out)
    from ediff_core.data import HELD_OUT

    if out == caption or any(re.search(rf"\b{c} {sh}", out.lower()) for c, sh in HELD_OUT):
        return None  # nothing changed, or a held-out composition (never in training text) appeared
    return out


def _hard_negative(caption: str, rng: random.Random, tries: int = 4) -> str:
    """`perturb_caption`, retried; an empty caption when none works out."""
    for _ in range(tries):
        if (out := perturb_caption(caption, rng)) is not None:
            return out
    return ""


def _clip_data(split: str, n: int, tokenizer, seed_offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 3, 64, 64) uint8 renders and (n, 3, 77) int32 ids of their short/medium/long captions."""
    from ediff_core.data import captions, render, sample_scene, split_seed

    images = torch.empty(n, 3, 64, 64, dtype=torch.uint8)
    texts: list[str] = []
    for i in range(n):
        scene = sample_scene(split_seed(split, seed_offset + i))
        images[i] = torch.from_numpy(np.asarray(render(scene, 64)).copy()).permute(2, 0, 1)
        c = captions(scene)
        texts += [c["short"], c["medium"], c["long"]]
    ids = tokenizer(texts).to(torch.int32).view(n, 3, -1)
    return images, ids, texts


def _clip_features(model, images: torch.Tensor, ids: torch.Tensor, mean: torch.Tensor, std: torch.Tensor):
    """Normalized image and text embeddings of uint8 images and (B, 77) ids."""
    from ediff_core.encoders.clip import text_tower

    x = (images.float() / 255.0 - mean) / std
    img = F.normalize(model.encode_image(x), dim=-1)
    _, txt = text_tower(model, ids.long(), crop=True)
    return img, F.normalize(txt, dim=-1)


def retrieval_top1(model, images: torch.Tensor, ids: torch.Tensor, mean, std) -> tuple[float, float]:
    """Top-1 accuracy of image->text and text->image retrieval among the given pairs."""
    model.eval()
    with torch.no_grad():
        img, txt = _clip_features(model, images, ids, mean, std)
    model.train()
    sim = img @ txt.T
    target = torch.arange(len(sim))
    return float((sim.argmax(1) == target).float().mean()), float((sim.argmax(0) == target).float().mean())


def train_mini_clip(out_dir: str | Path, steps: int = 600, batch_size: int = 256, seed: int = 0,
                    log: Log = _print, lr: float = 2e-3, n_scenes: int = 12000, max_seconds: float | None = None,
                    n_val: int = 256) -> dict:
    """Train mini-CLIP contrastively on Shapes World; save it in open_clip's layout (fp16).

    Args:
        out_dir: folder for open_clip's layout (open_clip_config.json, open_clip_model.safetensors).
        steps: most optimizer steps; `max_seconds`, if set, may end training earlier.
        batch_size: image-caption pairs per step (the contrastive negatives).
        seed: seeds the model init and the sampling of pairs and caption lengths.
        log: receives the progress lines.
        lr: peak AdamW learning rate.
        n_scenes: training scenes rendered once at 64 px and reused with their three captions.
        max_seconds: wall-clock budget of the optimisation loop (None: steps only).
        n_val: held-out validation pairs for the retrieval figures.

    Returns the figures (params, steps, seconds, held-out retrieval top-1 among `n_val` pairs).
    """
    import open_clip
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    from open_clip.tokenizer import SimpleTokenizer

    from ediff_core.encoders.clip import save_open_clip_folder

    out_dir = Path(out_dir)
    t_start = time.time()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    tokenizer = SimpleTokenizer(context_length=77)
    images, ids, texts = _clip_data("train", n_scenes, tokenizer)
    val_images, val_ids_all, _ = _clip_data("validation", n_val, tokenizer)
    py_rng = random.Random(seed)
    kinds = torch.from_numpy(np.random.default_rng(1).integers(0, 3, n_val))
    val_ids = val_ids_all[torch.arange(n_val), kinds]  # one random caption length per pair
    log(f"[clip] rendered {n_scenes} training and {n_val} validation scenes ({time.time() - t_start:.1f} s)")

    model = open_clip.create_model(register_mini_clip_config()).train()
    n_params = sum(p.numel() for p in model.parameters())
    mean = torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.98), eps=1e-6)
    log(f"[clip] {n_params / 1e6:.2f} M params; {torch.get_num_threads()} threads; "
        f"held-out top-1 at init i->t {retrieval_top1(model, val_images, val_ids, mean, std)[0]:.3f}")
    sched = Schedule(steps, max_seconds, lr, warmup=0.1)
    running, step = None, 0
    while (frac := sched.progress(step)) < 1.0:
        for g in opt.param_groups:
            g["lr"] = sched.lr(frac)
        idx = torch.randint(0, n_scenes, (batch_size,), generator=gen)
        kind = torch.randint(0, 3, (batch_size,), generator=gen)  # a random one of the three captions
        # Each image also sees a hard negative of its own caption (image->text direction only).
        negatives = [_hard_negative(texts[3 * i + k], py_rng) for i, k in zip(idx.tolist(), kind.tolist())]
        all_ids = torch.cat([ids[idx, kind], tokenizer(negatives).to(torch.int32)])
        img, txt = _clip_features(model, images[idx], all_ids, mean, std)
        logits = model.logit_scale.exp().clamp(max=100) * img @ txt.T  # (B, 2B)
        target = torch.arange(batch_size)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits[:, :batch_size].T, target)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        step += 1
        if step % 25 == 0:
            sched.report(log, "clip", step, running)
    train_s = time.time() - sched.t0
    steps = step
    i2t, t2i = retrieval_top1(model, val_images, val_ids, mean, std)
    per_kind = {name: retrieval_top1(model, val_images, val_ids_all[:, k], mean, std)
                for k, name in enumerate(("short", "medium", "long"))}

    save_open_clip_folder(model, MINI_CLIP_CONFIG, out_dir, dtype=torch.float16)
    figures = {
        "params": n_params, "steps": steps, "batch_size": batch_size, "lr": lr, "train_scenes": n_scenes,
        "train_seconds": round(train_s, 1), "seconds_per_step": round(train_s / max(1, steps), 4),
        "threads": torch.get_num_threads(),
        "held_out_top1_image_to_text": round(i2t, 4), "held_out_top1_text_to_image": round(t2i, 4),
        "held_out_pairs": n_val, "chance": round(1 / n_val, 4),
        "held_out_top1_by_caption": {k: [round(a, 4), round(b, 4)] for k, (a, b) in per_kind.items()},
        "total_seconds": round(time.time() - t_start, 1),
    }
    (out_dir / "training.json").write_text(json.dumps(figures, indent=2) + "\n")
    log(f"[clip] held-out retrieval top-1 among {n_val} pairs: image->text {i2t:.3f}, text->image {t2i:.3f} "
        f"(chance {1 / n_val:.4f}); by caption length {per_kind}; saved to {out_dir}")
    return figures


def main(argv: list[str] | None = None) -> None:
    """CLI: train both mini encoders into OUT/t5 and OUT/clip."""
    parser = argparse.ArgumentParser(description="Pretrain the ediff-mini T5 and CLIP encoders on Shapes World.")
    parser.add_argument("--out", default="checkpoints/ediff-mini", help="model folder; writes OUT/t5 and OUT/clip")
    parser.add_argument("--t5-steps", type=int, default=1500, help="span-corruption steps (0: skip T5)")
    parser.add_argument("--clip-steps", type=int, default=600, help="contrastive steps (0: skip CLIP)")
    parser.add_argument("--t5-batch-size", type=int, default=128)
    parser.add_argument("--clip-batch-size", type=int, default=256)
    parser.add_argument("--t5-seconds", type=float, default=None, help="wall-clock budget of T5's loop")
    parser.add_argument("--clip-seconds", type=float, default=None, help="wall-clock budget of CLIP's loop")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch.get_num_threads()); on a CPU other jobs keep busy, "
                             "1 thread can be several times faster than oversubscribed 2")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    random.seed(args.seed)
    figures = {}
    t0 = time.time()
    if args.t5_steps > 0:
        figures["t5"] = train_mini_t5(Path(args.out) / "t5", args.t5_steps, args.t5_batch_size, args.seed,
                                      max_seconds=args.t5_seconds)
    if args.clip_steps > 0:
        figures["clip"] = train_mini_clip(Path(args.out) / "clip", args.clip_steps, args.clip_batch_size, args.seed,
                                          max_seconds=args.clip_seconds)
    figures["wall_clock_seconds"] = round(time.time() - t0, 1)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
