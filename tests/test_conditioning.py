"""Multi-encoder conditioning: dropout, encoder selection, key layout (eDiff-I §4.2, App. A)."""

import pytest
import torch

from ediff_core.core.conditioning import CLIP_IMAGE, CLIP_TEXT, T5, Cond, ConditionProjector, drop_embeddings, key_layout, select_encoders


def _cond(B=6, L=12):
    g = torch.Generator().manual_seed(0)
    return Cond(
        clip_tokens=torch.randn(B, 77, 8, generator=g) + 5,
        clip_mask=torch.arange(77).expand(B, -1) < 10,
        clip_pooled=torch.randn(B, 16, generator=g) + 5,
        t5_tokens=torch.randn(B, L, 8, generator=g) + 5,
        t5_mask=torch.arange(L).expand(B, -1) < 7,
        image_embed=torch.randn(B, 16, generator=g) + 5,
        keep=torch.ones(B, 3, dtype=torch.bool),
    )


@pytest.mark.parametrize("mode,clip,t5", [("both", True, True), ("t5", False, True), ("clip", True, False)])
def test_selection_zeroes_exactly_the_dropped_embeddings(mode, clip, t5):
    c = select_encoders(_cond(), mode)
    assert bool((c.clip_tokens != 0).all()) == clip and bool((c.clip_tokens == 0).all()) == (not clip)
    assert bool((c.clip_pooled != 0).all()) == clip
    assert bool((c.t5_tokens != 0).all()) == t5 and bool((c.t5_tokens == 0).all()) == (not t5)
    assert bool((c.image_embed != 0).all())
    assert c.keep[:, CLIP_TEXT].all() == clip and c.keep[:, T5].all() == t5 and c.keep[:, CLIP_IMAGE].all()
    off = select_encoders(_cond(), mode, use_image=False)
    assert bool((off.image_embed == 0).all()) and not off.keep[:, CLIP_IMAGE].any()


def test_unknown_encoder_mode_is_refused():
    with pytest.raises(ValueError, match="encoders must be one of both, t5, clip; got 'bert'"):
        select_encoders(_cond(), "bert")


def test_dropout_zeroes_whole_tensors_at_the_papers_rates():
    c = drop_embeddings(_cond(B=20000, L=2), generator=torch.Generator().manual_seed(0))
    kept = c.keep.float().mean(0)
    assert torch.allclose(kept, torch.tensor([0.8, 0.75, 0.1]), atol=0.015)
    dropped_t5 = ~c.keep[:, T5]
    assert bool((c.t5_tokens[dropped_t5] == 0).all()) and bool((c.t5_tokens[~dropped_t5] != 0).all())
    dropped_img = ~c.keep[:, CLIP_IMAGE]
    assert bool((c.image_embed[dropped_img] == 0).all()) and bool((c.image_embed[~dropped_img] != 0).all())


def test_unconditional_drops_all_three():
    u = _cond().unconditional()
    assert not u.keep.any()
    assert all(bool((t == 0).all()) for t in (u.clip_tokens, u.clip_pooled, u.t5_tokens, u.image_embed))


def test_projector_layout_and_mask():
    B, L = 3, 12
    proj = ConditionProjector(clip_dim=8, clip_pooled_dim=16, t5_dim=8, image_dim=16, width=24)
    c = select_encoders(_cond(B, L), "t5")
    tokens, mask, g = proj(c)
    assert tokens.shape == (B, 1 + 77 + L + 1, 24) and mask.shape == (B, 1 + 77 + L + 1)
    assert g.shape == (B, 32)
    lay = key_layout(L)
    assert mask[:, lay["null"]].all()  # the learnable null token is always attendable
    assert not mask[:, lay["clip"]].any()  # CLIP text dropped
    assert mask[:, lay["t5"]].sum(1).tolist() == [7] * B  # T5 padding masked
    assert mask[:, lay["image"]].all()
    assert torch.equal(tokens[:, 0], proj.null_token.expand(B, -1, -1)[:, 0])


def test_cat_and_index_round_trip():
    a, b = _cond(2), _cond(3)
    c = Cond.cat([a, b])
    assert c.batch_size == 5
    assert torch.equal(c.index(slice(2, 5)).t5_tokens, b.t5_tokens)
    lowres = Cond.cat([a, replace_lowres(b)])
    assert lowres.lowres.shape == (5, 3, 4, 4) and bool((lowres.lowres[:2] == 0).all())


def replace_lowres(c):
    from dataclasses import replace

    return replace(c, lowres=torch.ones(c.batch_size, 3, 4, 4))
