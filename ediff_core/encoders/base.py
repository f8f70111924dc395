"""The encoder contract (docs/architecture.md) and helpers shared by every text encoder.

eDiff-I conditions on three frozen, precomputed embeddings (§4.2): T5 text tokens, CLIP text
tokens (plus the pooled CLIP text feature) and the pooled CLIP image embedding. Every encoder
in this package returns the same :class:`TextEmbedding`, so the conditioning code never knows
which tokenizer or model produced it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable

from torch import Tensor


@dataclass
class TextEmbedding:
    """Per-token text features of a batch of prompts.

    Attributes:
        tokens: (B, L, D) float32 per-token features (the encoder's last hidden state).
        mask: (B, L) bool, True for real tokens (including BOS/EOS), False for padding.
        pooled: (B, D_pooled) projected EOT feature for CLIP; None for T5.
    """

    tokens: Tensor
    mask: Tensor
    pooled: Tensor | None = None


@runtime_checkable
class TextEncoder(Protocol):
    """A frozen text encoder; outputs are always padded/truncated to ``max_length``."""

    name: str
    max_length: int
    dim: int
    pooled_dim: int

    def encode(self, prompts: list[str]) -> TextEmbedding: ...

    def token_strings(self, prompt: str) -> list[str]: ...

    def phrase_token_positions(self, prompt: str, phrase: str) -> list[int]: ...

    def truncated(self, prompt: str) -> bool: ...


@runtime_checkable
class ImageEncoder(Protocol):
    """A frozen image encoder: (B,3,H,W) floats in [0,1], any H and W -> (B, dim)."""

    dim: int
    image_size: int

    def encode_image(self, images: Tensor) -> Tensor: ...


def _normalize_with_map(text: str) -> tuple[str, list[int]]:
    """Lowercase `text`, turn every run of non-alphanumerics into one space, and strip.

    Returns the normalized string and, for each of its characters, the index of the
    character of `text` it came from (spaces map to the first character of their run).
    """
    chars: list[str] = []
    index: list[int] = []
    for i, ch in enumerate(text):
        if ch.isalnum():
            chars.extend(ch.lower())
            index.extend([i] * len(ch.lower()))
        elif chars and chars[-1] != " ":
            chars.append(" ")
            index.append(i)
    if chars and chars[-1] == " ":
        chars.pop()
        index.pop()
    return "".join(chars), index


def phrase_char_span(text: str, phrase: str) -> tuple[int, int] | None:
    """Character span [start, end) of the first whole-word occurrence of `phrase` in `text`.

    Matching ignores case, punctuation and runs of whitespace ("Blue-star" matches "blue star"),
    and only matches whole words ("red" does not match inside "reddish"), except that a plural
    ending may follow ("blue star" matches "blue stars", covering the whole last word).
    Returns None when the phrase does not occur (or is empty after normalization).
    """
    norm_text, index = _normalize_with_map(text)
    norm_phrase, _ = _normalize_with_map(phrase)
    if not norm_phrase:
        return None
    start = norm_text.find(norm_phrase)
    while start >= 0:
        end = start + len(norm_phrase)
        if start == 0 or norm_text[start - 1] == " ":
            for suffix in ("", "s", "es"):
                stop = end + len(suffix)
                if norm_text[end:stop] == suffix and (stop == len(norm_text) or norm_text[stop] == " "):
                    return index[start], index[stop - 1] + 1
        start = norm_text.find(norm_phrase, start + 1)
    return None


def overlapping_positions(spans: Sequence[tuple[int, int] | None], span: tuple[int, int]) -> list[int]:
    """Indices of the token `spans` (character ranges, None for special tokens) overlapping `span`."""
    start, end = span
    return [i for i, s in enumerate(spans) if s is not None and s[1] > s[0] and s[0] < end and s[1] > start]


def positions_in_spans(token_spans: Sequence[tuple[int, int] | None], spans: Sequence[tuple[int, int]]) -> list[int]:
    """Sorted indices of the tokens overlapping any of the character ``spans``."""
    return sorted({i for span in spans for i in overlapping_positions(token_spans, span)})


def phrase_not_found(phrase: str, prompt: str) -> ValueError:
    """The one error for a phrase that is not in its prompt (used by every encoder)."""
    return ValueError(f"phrase '{phrase}' is not in the prompt '{prompt}'")
