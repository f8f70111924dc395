"""What the model knows, on the page: word chips that insert into the prompt, and a notice
naming the words of a prompt the model's own tokenizers do not know (``ediff_core.tools.vocabulary``).
"""

from __future__ import annotations

import html

from ediff_core.tools.vocabulary import WORD_GROUPS, TokenizerVocabulary
from server.model import ModelLike


class Words:
    """The vocabulary of the served model.

    Args:
        model: the served model. In-process (``server.model.Model``) its text encoders' tokenizers
            are asked; over HTTP (``RemoteModel``) there are none here, so no notice is shown.
        name: the model's name, used in the notice.
    """

    def __init__(self, model: ModelLike, name: str):
        pipe = getattr(model, "pipe", None)
        encoders = [] if pipe is None else [pipe.encoders.t5, pipe.encoders.clip_text]
        self.vocabulary = TokenizerVocabulary.from_encoders(encoders)
        self.name = name

    @property
    def checks(self) -> bool:
        """Whether some tokenizer of the model has a vocabulary of its own to check against."""
        return bool(self.vocabulary.splitters)

    def notice(self, prompt: str) -> str:
        """Markdown naming the words of ``prompt`` the model does not know; "" when it knows all."""
        unknown = self.vocabulary.unknown_words(prompt)
        if not unknown:
            return ""
        listed = ", ".join(f"**{w}**" for w in unknown)
        return f"⚠ {self.name} does not know {listed}: its tokenizer never saw {'it' if len(unknown) == 1 else 'them'} in Shapes World."

    @staticmethod
    def chips_html() -> str:
        """One line per kind of word (colours, shapes, ...), each word a chip button."""
        rows = []
        for kind, words in WORD_GROUPS.items():
            chips = "".join(f'<button type="button" class="ediff-chip" data-word="{html.escape(w)}">{html.escape(w)}</button>' for w in words)
            rows.append(f'<div><span class="kind">{kind}</span>{chips}</div>')
        return f'<div class="ediff-chips">{"".join(rows)}</div>'
