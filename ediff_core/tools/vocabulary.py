"""What a model can be asked for: the Shapes World vocabulary, and the words its tokenizers know.

ediff-mini was trained only on Shapes World captions (ediff_core.data), so its prompts should use
their words. ``WORD_GROUPS`` lists them by kind, taken from the caption generator itself;
``TokenizerVocabulary`` tells, for any prompt, which words the model's own tokenizers do not hold
whole: the mini-T5 tokenizer was trained on those captions (391 pieces), so a word it splits into
sub-word pieces ("cat" -> "c", "a", "t") is one the model never saw. Only such small, trained-here
vocabularies speak for the model: a general one (CLIP's 49,408-token BPE, T5's 32k SentencePiece)
splits rare words ("cyan" -> "cy", "an") that the model learned all the same, so it is not asked.
"""

from __future__ import annotations

import re
from typing import Callable, Iterable, Sequence

from ..data.captions import CELL_PHRASES, NUMBER_WORDS, RELATIONS, SIZE_WORDS, STYLE_PHRASES
from ..data.shapes_world import COLORS, SHAPES

# Kind -> the words or phrases a prompt may use, in the captions' own order.
WORD_GROUPS: dict[str, tuple[str, ...]] = {
    "colours": tuple(COLORS),
    "shapes": SHAPES,
    "sizes": tuple(SIZE_WORDS),
    "counts": NUMBER_WORDS[1:],
    "positions": tuple(options[0] for options in CELL_PHRASES.values()) + RELATIONS,
    "styles": tuple(options[0] for options in STYLE_PHRASES.values()),
}
PLURAL_ENDINGS = ("s", "es")
# A tokenizer with at most this many pieces was trained on the model's own captions (mini-T5: 391).
OWN_VOCABULARY_MAX = 5000
_WORD = re.compile(r"[^\W_]+")  # runs of letters and digits, as the encoders' phrase matching sees words

Splitter = Callable[[str], list[str]]  # a lowercase word -> its tokenizer pieces, markers removed


def prompt_words(prompt: str) -> list[str]:
    """The distinct lowercase words of ``prompt``, in order."""
    return list(dict.fromkeys(w.lower() for w in _WORD.findall(prompt or "")))


def _whole(pieces: Sequence[str], word: str) -> bool:
    """One piece, or a known stem and a plural ending ("star" + "s")."""
    if pieces == [word]:
        return True
    return len(pieces) == 2 and pieces[1] in PLURAL_ENDINGS and "".join(pieces) == word


def _hf_splitter(tokenizer) -> Splitter:
    """Pieces from an independent copy of a fast (Rust) tokenizer: the model server encodes on
    other threads, and a shared Rust tokenizer whose padding is being set refuses a second user."""
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_padding()
    backend.no_truncation()
    # SentencePiece may emit the word-start marker as a piece of its own ("▁", "a"): not a split.
    return lambda word: [p for p in (t.replace("\u2581", "") for t in backend.encode(word, add_special_tokens=False).tokens) if p]


def _bpe_splitter(tokenizer) -> Splitter:
    """Pieces from open_clip's SimpleTokenizer BPE (pure Python; '</w>' ends a word)."""

    def split(word: str) -> list[str]:
        encoded = "".join(tokenizer.byte_encoder[b] for b in word.encode("utf-8"))
        return [p.removesuffix("</w>") for p in tokenizer.bpe(encoded).split(" ")]

    return split


class TokenizerVocabulary:
    """Which words of a prompt each named tokenizer does not hold whole.

    Args:
        splitters: tokenizer name ("t5", "clip") -> a function from a lowercase word to its pieces.
    """

    def __init__(self, splitters: dict[str, Splitter]):
        self.splitters = splitters
        self._cache: dict[str, tuple[str, ...]] = {}

    @classmethod
    def from_encoders(cls, encoders: Iterable) -> "TokenizerVocabulary":
        """From text encoders (``T5TextEncoder``, ``CLIPTextEncoder``) whose tokenizer has at most
        ``OWN_VOCABULARY_MAX`` pieces; the others are general-purpose and skipped."""
        splitters: dict[str, Splitter] = {}
        for enc in encoders:
            tok = getattr(enc, "tokenizer", None)
            if hasattr(tok, "backend_tokenizer") and len(tok) <= OWN_VOCABULARY_MAX:
                splitters[enc.name] = _hf_splitter(tok)
            elif hasattr(tok, "bpe") and len(getattr(tok, "encoder", ())) <= OWN_VOCABULARY_MAX:
                splitters[enc.name] = _bpe_splitter(tok)
        return cls(splitters)

    def unknown_to(self, word: str) -> tuple[str, ...]:
        """The names of the tokenizers that split ``word`` (lowercase) into sub-word pieces."""
        if word not in self._cache:
            self._cache[word] = tuple(name for name, split in self.splitters.items() if not _whole(split(word), word))
        return self._cache[word]

    def unknown_words(self, prompt: str) -> list[str]:
        """The words of ``prompt`` that some tokenizer does not know, in order of appearance."""
        return [w for w in prompt_words(prompt) if self.unknown_to(w)]
