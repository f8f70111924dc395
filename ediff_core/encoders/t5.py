"""T5 text encoder (eDiff-I §4.2): Google T5 v1.1 or the ediff-mini T5, both in Hugging Face layout.

The paper conditions on the per-token last hidden states of T5-XXL's encoder. This wrapper
turns any `T5EncoderModel` folder (``config.json``, ``model.safetensors``, tokenizer files)
into the project's :class:`~ediff_core.encoders.base.TextEncoder`. Loading a folder or a Hub
id goes through :func:`ediff_core.encoders.loading.load_text_encoder`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import torch

from ediff_core.encoders.base import (
    TextEmbedding,
    overlapping_positions,
    phrase_char_span,
    phrase_not_found,
    positions_in_spans,
)

# Used when neither the caller nor the tokenizer names a usable length (Google's T5 tokenizers
# say 512 or "unlimited"; 128 tokens hold any realistic prompt and keep cross-attention cheap).
DEFAULT_MAX_LENGTH = 128
# A tokenizer's model_max_length above this is taken as "unset" rather than as a wish.
_LARGEST_TRUSTED_MAX_LENGTH = 256
_WORD_MARK = "\u2581"  # SentencePiece's word-boundary marker "▁"


class T5TextEncoder:
    """Frozen T5 encoder: per-token last hidden states, bool mask, no pooled feature.

    Args:
        folder: local folder in Hugging Face layout (``config.json``, ``model.safetensors`` or
            sharded safetensors, ``tokenizer.json`` or ``spiece.model``). Hub ids are resolved to
            such a folder by :func:`ediff_core.encoders.loading.load_text_encoder`.
        device: torch device the model runs on; outputs stay on it.
        max_length: fixed token length L of every output (EOS included). None: the tokenizer's
            ``model_max_length`` when it is at most 256 (the ediff-mini tokenizer stores its
            length there), else 128.
    """

    name = "t5"
    pooled_dim = 0

    def __init__(self, folder: str | Path, device: str | torch.device = "cpu", max_length: int | None = None):
        from transformers import AutoTokenizer, T5EncoderModel

        self.folder = Path(folder)
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.folder))
        if not getattr(self.tokenizer, "is_fast", False):
            raise ValueError(f"the tokenizer in {self.folder} has no fast (tokenizers) backend; "
                             "phrase positions need its offsets mapping")
        self.model = T5EncoderModel.from_pretrained(str(self.folder), dtype=torch.float32)
        self.model.to(self.device).float().eval().requires_grad_(False)
        if max_length is None:
            stored = int(getattr(self.tokenizer, "model_max_length", 0) or 0)
            max_length = stored if 0 < stored <= _LARGEST_TRUSTED_MAX_LENGTH else DEFAULT_MAX_LENGTH
        if max_length < 2:
            raise ValueError(f"max_length must be at least 2 (one token and EOS); got {max_length}")
        self.max_length = int(max_length)
        self.dim = int(self.model.config.d_model)

    def _tokenize(self, prompts: list[str], offsets: bool = False):
        return self.tokenizer(
            prompts,
            padding="max_length",
            truncation=True,
            max_length=self.max_length,
            return_offsets_mapping=offsets,
            return_tensors="pt",
        )

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> TextEmbedding:
        """Encode prompts to (B, L, D) tokens and a (B, L) bool mask; `pooled` is None."""
        if isinstance(prompts, str):
            raise TypeError("encode takes a list of prompts, not a single string")
        batch = self._tokenize(list(prompts))
        ids = batch["input_ids"].to(self.device)  # (B, L)
        mask = batch["attention_mask"].to(self.device).bool()  # (B, L)
        hidden = self.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state  # (B, L, D)
        return TextEmbedding(tokens=hidden.float(), mask=mask, pooled=None)

    def token_strings(self, prompt: str) -> list[str]:
        """The piece at each of the L positions ('▁' markers dropped; '</s>', '<pad>' by name)."""
        batch = self._tokenize([prompt])
        ids = batch["input_ids"][0].tolist()
        pieces = self.tokenizer.convert_ids_to_tokens(ids)
        out = []
        for piece, real in zip(pieces, batch["attention_mask"][0].tolist()):
            if not real:
                out.append(str(self.tokenizer.pad_token))
            else:
                out.append(piece.replace(_WORD_MARK, "") or _WORD_MARK)
        return out

    def phrase_token_positions(self, prompt: str, phrase: str) -> list[int]:
        """Positions of the tokens covering the first whole-word occurrence of `phrase`.

        Case, punctuation and subword splits do not matter: the phrase is found in the
        normalized prompt by characters, then every token whose character span (from the fast
        tokenizer's offsets) overlaps it is returned.
        """
        span = phrase_char_span(prompt, phrase)
        if span is None:
            raise phrase_not_found(phrase, prompt)
        positions = overlapping_positions(self._token_char_spans(prompt), span)
        if not positions:
            raise ValueError(f"phrase '{phrase}' lies beyond the first {self.max_length} tokens "
                             f"of the prompt '{prompt}'")
        return positions

    def span_token_positions(self, prompt: str, spans: Sequence[tuple[int, int]]) -> list[int]:
        """Positions of the tokens overlapping any character span [start, end) of ``prompt``
        (the token-grounding loss's words); tokens past truncation are not among them."""
        return positions_in_spans(self._token_char_spans(prompt), spans)

    def _token_char_spans(self, prompt: str) -> list[tuple[int, int] | None]:
        """Each of the L positions' character span in ``prompt`` (fast tokenizer offsets); None for EOS and padding."""
        batch = self._tokenize([prompt], offsets=True)
        real = batch["attention_mask"][0].tolist()
        ids = batch["input_ids"][0].tolist()
        special = set(self.tokenizer.all_special_ids)
        return [(int(s), int(e)) if r and i not in special else None for (s, e), r, i in zip(batch["offset_mapping"][0].tolist(), real, ids)]

    def truncated(self, prompt: str) -> bool:
        """True when the prompt (with EOS) needs more than `max_length` tokens."""
        return len(self.tokenizer(prompt)["input_ids"]) > self.max_length


def case_folding_charsmap() -> bytes:
    """SentencePiece's precompiled 'nmt_nfkc_cf' normalizer (NFKC + lowercase) as bytes.

    Stored in tokenizer.json as a `Precompiled` normalizer, which every T5 tokenizer loader
    (transformers 4 and 5) keeps, so the ediff-mini tokenizer stays case-insensitive on reload.
    """
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2

    spec = sentencepiece_model_pb2.NormalizerSpec()
    spec.ParseFromString(spm.SentencePieceNormalizer(rule_name="nmt_nfkc_cf").serialized_normalizer_spec())
    return bytes(spec.precompiled_charsmap)


def train_t5_tokenizer(texts: Iterable[str], vocab_size: int = 768, extra_ids: int = 32, max_length: int = 64,
                       min_word_count: int = 5):
    """Train a lowercase SentencePiece-unigram tokenizer and wrap it as a `T5TokenizerFast`.

    The subword pieces come from `tokenizers`' `SentencePieceUnigramTokenizer` trainer. On a
    caption corpus with only ~130 word types that trainer keeps few whole words (it extracts seed
    pieces from each *distinct* word once, so a word that is not also inside another word is
    never a seed), so every word seen at least `min_word_count` times is added as a "▁word"
    piece scored with its unigram log-probability; Viterbi then keeps known words whole and
    splits unseen ones into subwords and characters.

    Args:
        texts: the training corpus (captions); lowercased here and by the tokenizer.
        vocab_size: cap on the pieces including `<pad>`, `</s>`, `<unk>` (sentinels come on top).
        extra_ids: number of `<extra_id_N>` sentinels for span corruption (T5 has 100).
        max_length: stored as the tokenizer's `model_max_length`: the encoder's default L.
        min_word_count: a word needs this many occurrences to become a piece of its own.

    Returns:
        A `T5TokenizerFast` with T5's id layout: `<pad>`=0, `</s>`=1, `<unk>`=2, pieces, then the
        sentinels in reverse (so `<extra_id_0>` is the last id). Save it with `save_pretrained`.
    """
    import json
    import math
    import re
    import string
    from collections import Counter

    from tokenizers import SentencePieceUnigramTokenizer
    from transformers import T5TokenizerFast

    if not 1 <= extra_ids <= 100:
        raise ValueError(f"extra_ids must be in 1..100; got {extra_ids}")
    texts = [t.lower() for t in texts]
    unigram = SentencePieceUnigramTokenizer()
    unigram.train_from_iterator(
        texts,
        vocab_size=vocab_size,
        show_progress=False,
        special_tokens=["<pad>", "</s>", "<unk>"],
        unk_token="<unk>",
        # Every lowercase letter, digit and common punctuation stays a known piece.
        initial_alphabet=list(string.ascii_lowercase + string.digits + ".,;:!?'\"-()&/"),
    )
    pieces = [tuple(p) for p in json.loads(unigram.to_str())["model"]["vocab"]]
    if [p[0] for p in pieces[:3]] != ["<pad>", "</s>", "<unk>"]:
        raise RuntimeError(f"unexpected special-token layout in the trained vocabulary: {pieces[:3]}")
    words = Counter(w for t in texts for w in re.findall(r"[a-z0-9]+", t))
    total = sum(words.values())
    scores = dict(pieces)
    for w, n in words.most_common():
        if n >= min_word_count:  # a frequent word is one piece, at least as likely as its count says
            scores[_WORD_MARK + w] = max(scores.get(_WORD_MARK + w, -math.inf), math.log(n / total))
    pieces = list(scores.items())[:vocab_size]
    pieces += [(f"<extra_id_{i}>", 0.0) for i in reversed(range(extra_ids))]
    tokenizer = T5TokenizerFast(vocab=pieces, extra_ids=extra_ids, _spm_precompiled_charsmap=case_folding_charsmap())
    tokenizer.model_max_length = max_length
    tokenizer.init_kwargs["model_max_length"] = max_length
    return tokenizer
