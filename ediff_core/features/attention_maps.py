"""Cross-attention maps per token and σ (eDiff-I Fig. 3, §1): where the text steers the image.

During the base stage every cross-attention layer hands its probabilities softmax(QKᵀ/√d_k) to an
``AttentionRecorder`` (through ``attention.attention_hook``), which averages them over heads
and layers for each denoiser evaluation. The paper's observation is read off ``share_on_null``:
at high σ the attention goes to the text tokens, at low σ mostly to the null token.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from ..core.attention import attention_hook, layer_hw
from ..core.conditioning import key_layout
from ..core.feature import Feature
from ..core.request import RequestError
from .paint_with_words import phrase_positions

if TYPE_CHECKING:
    from ..pipeline import EDiffPipeline, Evaluate, GenerationResult
    from ..core.request import GenerationRequest


@dataclass
class _Entry:
    sigma: float
    total: Tensor | None = None  # (rows, S, h, w) sum over layers of head-averaged probabilities
    layers: int = 0


@dataclass
class AttentionRecorder(Feature):
    """Collects head- and layer-averaged cross-attention of the base stage, one entry per evaluation
    (the feature behind ``attention_maps``: ``GenerationResult.attention``).

    Args:
        resolution: the base stage's side in pixels (layers' grids are derived from it).
        map_size: side the maps of all layers are averaged at (bilinear): the finest attention level.
        tokens: a name per key position ``[<null> | CLIP 77 | T5 L | <image>]``.
        words: each word of the prompt -> its key positions in both token sequences.
    """

    prompt: str
    resolution: int
    map_size: int
    layout: dict[str, slice]
    tokens: list[str]
    words: dict[str, list[int]]
    rows: int = 0  # conditional samples: the first rows of a CFG batch
    entries: list[_Entry] = field(default_factory=list)

    @classmethod
    def for_request(cls, pipe: "EDiffPipeline", req: "GenerationRequest") -> Optional["AttentionRecorder"]:
        if not req.attention_maps:
            return None
        cfg = pipe.base.ensemble.experts[0].net.config
        levels = [i for i, a in enumerate(cfg.attention) if a]
        map_size = pipe.base.resolution >> (levels[0] if levels else 0)
        clip, t5 = pipe.encoders.clip_text, pipe.encoders.t5
        layout = key_layout(t5.max_length, clip.max_length)
        tokens = ["<null>", *clip.token_strings(req.prompt), *t5.token_strings(req.prompt), "<image>"]
        words: dict[str, list[int]] = {}
        for word in dict.fromkeys(re.findall(r"[a-z0-9]+", req.prompt.lower())):
            try:
                c, t = phrase_positions(pipe, req.prompt, word)
            except RequestError:
                continue
            words[word] = [layout["clip"].start + p for p in c] + [layout["t5"].start + p for p in t]
        return cls(req.prompt, pipe.base.resolution, map_size, layout, tokens, words)

    def add(self, probs: Tensor, sigma: Tensor | None) -> None:
        """One layer's probabilities (B, heads, N, S); only the first ``rows`` (conditional) are kept."""
        p = probs[: self.rows].float().mean(1)  # (rows, N, S): average over heads
        rows, n, s = p.shape
        h, w = layer_hw(n, self.resolution, self.resolution)
        m = p.transpose(1, 2).reshape(rows, s, h, w)
        if (h, w) != (self.map_size, self.map_size):
            m = F.interpolate(m, size=(self.map_size,) * 2, mode="bilinear", align_corners=False)
        e = self.entries[-1]
        e.total = m if e.total is None else e.total + m
        e.layers += 1

    def wrap(self, evaluate: "Evaluate") -> "Evaluate":
        """An ``evaluate`` hook for ``EDiffPipeline.generate`` that records base-stage evaluations."""

        def recorded(stage, D, x, sigma, gc):
            if stage.is_sr:
                return evaluate(stage, D, x, sigma, gc)
            self.rows = x.shape[0]
            self.entries.append(_Entry(float(sigma.reshape(-1)[0])))
            with attention_hook(self.add):
                return evaluate(stage, D, x, sigma, gc)

        return recorded

    def result(self) -> dict[str, Any]:
        return {"attention": self.summary()}

    def summary(self) -> dict:
        """``GenerationResult.attention``: maps (T, B, S, h, w) per evaluation's σ, token names, shares."""
        done = [e for e in self.entries if e.layers]
        S = len(self.tokens)
        maps = torch.stack([e.total / e.layers for e in done]) if done else torch.zeros(0, self.rows, S, self.map_size, self.map_size)
        att = {
            "prompt": self.prompt,
            "sigmas": [e.sigma for e in done],
            "maps": maps,
            "tokens": self.tokens,
            "layout": {k: [v.start, v.stop] for k, v in self.layout.items()},
            "words": self.words,
        }
        att["shares"] = share_on_null(att)
        return att


def share_on_null(attention: dict) -> list[dict[str, float]]:
    """Per σ, the share of attention on the null token, the text tokens (CLIP + T5) and the image
    token, averaged over pixels and images; the three sum to 1 (masked padding gets none)."""
    maps = attention["maps"]
    if maps.shape[0] == 0:
        return []
    m = maps.mean((-1, -2)).mean(1)  # (T, S)
    lay = {k: slice(*v) for k, v in attention["layout"].items()}
    out = []
    for sigma, row in zip(attention["sigmas"], m):
        clip, t5 = float(row[lay["clip"]].sum()), float(row[lay["t5"]].sum())
        out.append({"sigma": sigma, "null": float(row[lay["null"]].sum()), "text": clip + t5, "clip": clip, "t5": t5, "image": float(row[lay["image"]].sum())})
    return out


def token_columns(attention: dict, token: str | int) -> list[int]:
    """Key positions of ``token``: an index, '<null>', '<image>', or a word/phrase of the prompt
    ('null' and 'image' without brackets too, unless the prompt has that word)."""
    if isinstance(token, int):
        if not 0 <= token < len(attention["tokens"]):
            raise ValueError(f"token index {token} is outside 0..{len(attention['tokens']) - 1}")
        return [token]
    name = token.strip().lower()
    special = name.strip("<>")
    if special in ("null", "image") and (name.startswith("<") or special not in attention["words"]):
        return list(range(*attention["layout"][special]))
    cols: list[int] = []
    for word in re.findall(r"[a-z0-9]+", name):
        if word not in attention["words"]:
            raise ValueError(f"'{word}' is not a word of the prompt '{attention['prompt']}'; choose from {', '.join(attention['words'])}")
        cols += attention["words"][word]
    if not cols:
        raise ValueError(f"token {token!r} names no word of the prompt")
    return sorted(set(cols))


def token_map(attention: dict, token: str | int, index: int = 0, step: int | None = None) -> Tensor:
    """(h, w) attention on ``token`` (summed over its key positions) of image ``index``, at one
    evaluation ``step`` or averaged over all of them (None)."""
    maps = attention["maps"]
    if maps.shape[0] == 0:
        raise ValueError("no cross-attention was recorded (the base U-Net has no attention layers)")
    sel = maps if step is None else maps[step : step + 1]
    return sel[:, index, token_columns(attention, token)].sum(1).mean(0)


def attention_overlay(result: "GenerationResult", token: str | int, index: int = 0, step: int | None = None, size: int = 256) -> Image.Image:
    """A heat map of the attention on ``token`` over image ``index`` of ``result`` (size × size)."""
    if result.attention is None:
        raise ValueError("the result has no attention maps; generate with attention_maps=True")
    m = token_map(result.attention, token, index, step)
    m = (m / m.max().clamp(min=1e-8))[None, None]
    v = F.interpolate(m, size=(size, size), mode="bilinear", align_corners=False)[0, 0].clamp(0, 1).numpy()
    heat = np.stack([np.clip(3 * v, 0, 1), np.clip(3 * v - 1, 0, 1), np.clip(3 * v - 2, 0, 1)], -1)  # black-red-yellow-white
    base = np.asarray(result.images[index].convert("RGB").resize((size, size), Image.NEAREST), np.float32) / 255
    return Image.fromarray((255 * (0.45 * base + 0.55 * heat)).round().astype(np.uint8))
