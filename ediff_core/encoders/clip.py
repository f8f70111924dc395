"""CLIP text and image encoders (eDiff-I §4.2) through open_clip, loaded from safetensors only.

eDiff-I uses CLIP ViT-L/14 twice: its 77 text-token features (cross-attention, plus the pooled
projected EOT feature for global conditioning) and its pooled image embedding (global
conditioning and style transfer, §5.3). The real OpenAI model and the ediff-mini one share one
folder layout, open_clip's own::

    open_clip_config.json        {"model_cfg": {...}, "preprocess_cfg": {"mean", "std", ...}}
    open_clip_model.safetensors  the full CLIP state dict

Hub ids are resolved to such a folder by :func:`ediff_core.encoders.loading.load_clip`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ediff_core.encoders.base import (
    TextEmbedding,
    overlapping_positions,
    phrase_char_span,
    phrase_not_found,
    positions_in_spans,
)

CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
PAD_STRING = "<pad>"


def text_tower(model: torch.nn.Module, text: Tensor, crop: bool = False) -> tuple[Tensor, Tensor]:
    """Per-token features after `ln_final` (B, L, W) and the pooled projected feature (B, E).

    Mirrors `open_clip.model.CLIP.encode_text` (open_clip 3.x) but keeps the token features.
    crop: run only the first max(EOT position) + 1 positions; with the causal mask this gives
        the same features there (training uses it; the encoder always returns all 77).
    """
    from open_clip.transformer import text_global_pool

    m = model
    length = text.shape[1]
    if crop and m.text_pool_type == "argmax" and not getattr(m.transformer, "grad_checkpointing", False):
        length = int(text.argmax(dim=-1).max()) + 1
        text = text[:, :length]
    x = m.token_embedding(text) + m.positional_embedding[:length]  # (B, L, W)
    mask = m.attn_mask[:length, :length] if m.attn_mask is not None else None
    x = m.transformer(x, attn_mask=mask)
    x = m.ln_final(x)  # (B, L, W)
    pooled = text_global_pool(x, text, m.text_pool_type, eos_token_id=getattr(m, "text_eos_id", None))
    if m.text_projection is not None:
        proj = m.text_projection
        pooled = proj(pooled) if isinstance(proj, torch.nn.Linear) else pooled @ proj
    return x, pooled


class CLIPTextEncoder:
    """CLIP text tower as a :class:`~ediff_core.encoders.base.TextEncoder` (name "clip").

    `tokens` are the final transformer hidden states after `ln_final`, (B, 77, width);
    `pooled` is the projected EOT feature, exactly open_clip's `encode_text` (not normalized).
    """

    name = "clip"

    def __init__(self, model: torch.nn.Module, device: torch.device):
        from open_clip.tokenizer import SimpleTokenizer

        self.model = model
        self.device = device
        self.max_length = int(model.context_length)
        self.tokenizer = SimpleTokenizer(context_length=self.max_length)
        self.dim = int(model.transformer.width)
        projection = model.text_projection
        self.pooled_dim = int(projection.out_features if isinstance(projection, torch.nn.Linear) else projection.shape[1])

    def tokenize(self, prompts: list[str]) -> Tensor:
        """(B, 77) ids: SOT, BPE tokens, EOT, zeros; over-long prompts end in EOT at 76."""
        return self.tokenizer(list(prompts), context_length=self.max_length)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> TextEmbedding:
        """Per-token features, mask (True from SOT through EOT) and pooled projected EOT feature."""
        if isinstance(prompts, str):
            raise TypeError("encode takes a list of prompts, not a single string")
        text = self.tokenize(prompts).to(self.device)  # (B, L)
        x, pooled = text_tower(self.model, text)
        eot = (text == self.tokenizer.eot_token_id).int().argmax(dim=-1)  # (B,)
        mask = torch.arange(text.shape[1], device=text.device)[None, :] <= eot[:, None]  # (B, L)
        return TextEmbedding(tokens=x.float(), mask=mask, pooled=pooled.float())

    def _pieces(self, prompt: str) -> tuple[str, list[str], list[tuple[int, int]]]:
        """The cleaned prompt, its BPE pieces and each piece's character span in it.

        Follows `SimpleTokenizer.encode` step by step (clean, regex split, byte-encode, BPE), so
        piece k is the token at position k + 1 (position 0 is SOT).
        """
        tok = self.tokenizer
        cleaned = tok.clean_fn(prompt)
        pieces: list[str] = []
        spans: list[tuple[int, int]] = []
        for match in tok.pat.finditer(cleaned):
            word = match.group()
            byte_to_char = [i for i, ch in enumerate(word) for _ in ch.encode("utf-8")]
            byte_pos = 0
            for piece in tok.bpe("".join(tok.byte_encoder[b] for b in word.encode("utf-8"))).split(" "):
                n_bytes = len(piece[:-4] if piece.endswith("</w>") else piece)  # one char per byte
                lo, hi = byte_pos, min(byte_pos + n_bytes, len(byte_to_char))
                spans.append((match.start() + byte_to_char[lo], match.start() + byte_to_char[hi - 1] + 1))
                pieces.append(piece)
                byte_pos = hi
        return cleaned, pieces, spans

    def token_strings(self, prompt: str) -> list[str]:
        """The piece at each of the 77 positions ('</w>' dropped; specials and '<pad>' by name)."""
        ids = self.tokenize([prompt])[0].tolist()
        eot = ids.index(self.tokenizer.eot_token_id)
        out = []
        for pos, i in enumerate(ids):
            if pos > eot:
                out.append(PAD_STRING)
                continue
            piece = self.tokenizer.decoder[i]
            if i not in self.tokenizer.all_special_ids:
                raw = bytearray(self.tokenizer.byte_decoder[c] for c in piece.replace("</w>", ""))
                piece = raw.decode("utf-8", errors="replace")
            out.append(piece)
        return out

    def phrase_token_positions(self, prompt: str, phrase: str) -> list[int]:
        """Positions (SOT = 0) of the BPE tokens covering the first whole-word match of `phrase`.

        Case, punctuation and subword splits do not matter: the phrase is found by characters
        in the cleaned lowercase prompt, then each token whose characters overlap it is taken.
        """
        cleaned, _, spans = self._pieces(prompt)
        span = phrase_char_span(cleaned, phrase)
        if span is None:
            raise phrase_not_found(phrase, prompt)
        # Token k sits at position k + 1; position L - 1 is EOT, even for truncated prompts.
        positions = [k + 1 for k in overlapping_positions(spans, span) if k + 1 < self.max_length - 1]
        if not positions:
            raise ValueError(f"phrase '{phrase}' lies beyond the first {self.max_length} tokens "
                             f"of the prompt '{prompt}'")
        return positions

    def span_token_positions(self, prompt: str, spans: Sequence[tuple[int, int]]) -> list[int]:
        """Positions (SOT = 0) of the BPE tokens overlapping any character span [start, end) of
        ``prompt`` (the token-grounding loss's words); EOT and tokens past truncation are not among them.

        The spans index ``prompt`` itself, so it must be one the cleaning only lowercases (single
        spaces, no HTML entities or mojibake), as generated captions are.
        """
        cleaned, _, token_spans = self._pieces(prompt)
        if cleaned != prompt.lower():
            raise ValueError(f"character spans need a prompt that CLIP's cleaning leaves in place (single spaces, plain text); got {prompt!r}")
        return [k + 1 for k in positions_in_spans(token_spans, spans) if k + 1 < self.max_length - 1]

    def truncated(self, prompt: str) -> bool:
        """True when SOT + tokens + EOT exceed the context length (77)."""
        return len(self.tokenizer.encode(prompt)) + 2 > self.max_length


class CLIPImageEncoder:
    """CLIP image tower as an :class:`~ediff_core.encoders.base.ImageEncoder`.

    Images are (B, 3, H, W) floats in [0, 1] of any size: the shorter side is resized to the
    model's image size (bicubic, antialiased), the centre is cropped, and the model's mean/std
    normalisation is applied, as open_clip's own preprocessing does.
    """

    def __init__(self, model: torch.nn.Module, device: torch.device, mean: list[float], std: list[float]):
        self.model = model
        self.device = device
        size = model.visual.image_size
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.dim = int(model.visual.output_dim)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)

    def preprocess(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, 3, S, S) normalised model input."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W) floats in [0, 1]; got shape {tuple(images.shape)}")
        x = images.to(self.device, torch.float32)
        s = self.image_size
        h, w = x.shape[-2:]
        if (h, w) != (s, s):
            scale = s / min(h, w)
            nh, nw = max(s, round(h * scale)), max(s, round(w * scale))
            x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
            top, left = (nh - s) // 2, (nw - s) // 2
            x = x[:, :, top : top + s, left : left + s]
        return (x.clamp(0, 1) - self.mean) / self.std

    @torch.no_grad()
    def encode_image(self, images: Tensor) -> Tensor:
        """Pooled projected image embedding (B, dim), not normalized (open_clip's `encode_image`)."""
        return self.model.encode_image(self.preprocess(images)).float()


class CLIPEncoders:
    """One open_clip model exposed as both encoders: `.text` (TextEncoder) and `.image` (ImageEncoder).

    Args:
        model: an `open_clip.CLIP` (the standard text tower; HF-text-tower models are not supported).
        preprocess_cfg: open_clip's preprocess config (`mean`, `std`; OpenAI's if absent).
        device: where the model runs; it is made float32, eval and frozen.
    """

    def __init__(self, model: torch.nn.Module, preprocess_cfg: dict, device: str | torch.device = "cpu"):
        from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

        if not hasattr(model, "token_embedding"):
            raise ValueError(f"{type(model).__name__} has no standard CLIP text tower; only open_clip.CLIP models are supported")
        self.device = torch.device(device)
        self.model = model.to(self.device).float().eval().requires_grad_(False)
        mean = list(preprocess_cfg.get("mean", OPENAI_DATASET_MEAN))
        std = list(preprocess_cfg.get("std", OPENAI_DATASET_STD))
        self.text = CLIPTextEncoder(self.model, self.device)
        self.image = CLIPImageEncoder(self.model, self.device, mean, std)

    @classmethod
    def from_folder(cls, folder: str | Path, device: str | torch.device = "cpu") -> "CLIPEncoders":
        """Build from an open_clip folder (`open_clip_config.json` + `open_clip_model.safetensors`)."""
        import open_clip

        folder = Path(folder)
        config = read_open_clip_config(folder)
        weights = folder / WEIGHTS_FILE
        if not weights.is_file():
            raise FileNotFoundError(f"{folder} has no {WEIGHTS_FILE} (CLIP weights are only read from safetensors)")
        model_cfg = dict(config["model_cfg"])
        model_cfg.pop("custom_text", None)
        model = open_clip.CLIP(**model_cfg)
        open_clip.load_checkpoint(model, str(weights), strict=True)
        return cls(model, config.get("preprocess_cfg", {}), device)


def read_open_clip_config(folder: Path) -> dict:
    """Read and check `open_clip_config.json`; errors name the file and what is wrong."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no {CONFIG_FILE} (expected open_clip's folder layout: "
                                f"{CONFIG_FILE} and {WEIGHTS_FILE})")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    model_cfg = config.get("model_cfg")
    if not isinstance(model_cfg, dict) or not {"embed_dim", "vision_cfg", "text_cfg"} <= model_cfg.keys():
        raise ValueError(f"{path} needs a 'model_cfg' with embed_dim, vision_cfg and text_cfg")
    if model_cfg.get("custom_text") or "hf_model_name" in model_cfg["text_cfg"]:
        raise ValueError(f"{path} describes a CLIP with a custom/HF text tower; only the standard "
                         "CLIP text transformer (per-token features after ln_final) is supported")
    return config


def save_open_clip_folder(model: torch.nn.Module, model_cfg: dict, folder: str | Path,
                          preprocess_cfg: dict | None = None, dtype: torch.dtype = torch.float16) -> Path:
    """Save `model` in open_clip's folder layout (config JSON + safetensors in `dtype`)."""
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    size = model_cfg["vision_cfg"].get("image_size", 224)
    preprocess = {"mean": list(OPENAI_DATASET_MEAN), "std": list(OPENAI_DATASET_STD),
                  "interpolation": "bicubic", "resize_mode": "shortest", "size": size}
    preprocess.update(preprocess_cfg or {})
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess}
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    state = {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
             for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE))
    return folder
