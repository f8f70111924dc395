"""What the page says the model knows (issue #29.3) and the examples it shows (#29.4), on the
shipped ediff-mini: its tokenizer holds every vocabulary word whole and splits words it never saw;
the shipped example results are this model's and the alignment metric passes each of them."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from demo.examples import SHIPPED, all_examples, fingerprint
from demo.words import Words
from ediff_core.tools.eval.alignment import check_alignment
from ediff_core.tools.vocabulary import WORD_GROUPS, prompt_words
from server.model import Model


@pytest.fixture(scope="module")
def shipped():
    model = Model.load(None)
    yield model
    model.close()


def test_every_vocabulary_word_is_known_and_others_are_named(shipped):
    words = Words(shipped, shipped.name)
    assert words.checks
    vocabulary = sorted({w for group in WORD_GROUPS.values() for phrase in group for w in prompt_words(phrase)})
    assert len(vocabulary) > 40
    assert [w for w in vocabulary if words.vocabulary.unknown_to(w)] == []
    assert words.vocabulary.unknown_words("two red stars and a cat on a sofa") == ["cat", "sofa"]
    assert words.notice("a red circle") == ""
    assert "**cat**" in words.notice("a red cat") and "**red**" not in words.notice("a red cat")


def test_chips_cover_every_kind_and_escape_their_words():
    html = Words.chips_html()
    for kind, group in WORD_GROUPS.items():
        assert f'<span class="kind">{kind}</span>' in html
        assert all(f'data-word="{w}"' in html for w in group)


def test_the_shipped_example_results_are_this_models_and_aligned(shipped):
    manifest = json.loads((SHIPPED / "manifest.json").read_text())
    assert manifest["fingerprint"] == fingerprint(shipped.info())  # else start-up would re-run them
    for ex in all_examples():
        files = manifest["examples"][ex.key]["files"]
        assert files, ex.key
        for name in files:
            if ex.tab == "encoders" and not name.endswith("_2.png"):
                continue  # CLIP only and T5 only are shown for contrast; "both" is the model's answer
            with Image.open(SHIPPED / name) as img:
                verdict = check_alignment(img.convert("RGB"), ex.prompt)
            assert verdict.aligned, (ex.key, name, verdict.details)
