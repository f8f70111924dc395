"""The U-Net presets build what their config says."""

import pytest

from ediff_core.core.networks import PRESETS, build_unet

DIMS = dict(clip_dim=64, clip_pooled_dim=128, t5_dim=128, image_dim=128)


@pytest.mark.parametrize("preset", ["tiny", "tiny_attn", "mini", "mini_attn32", "mini_wide", "mini_sr"])
def test_attention_heads_have_head_dim_channels(preset):
    # diffusers' UNet2DConditionModel reads attention_head_dim as a head *count* (diffusers#2011);
    # every attention layer must split its width into heads of ``head_dim`` channels.
    cfg = PRESETS[preset]
    net = build_unet(preset, 32, DIMS, super_resolution=preset.endswith("sr"))
    attns = [m for name, m in net.unet.named_modules() if name.endswith(("attn1", "attn2"))]
    assert attns
    for a in attns:
        width = a.to_q.out_features
        assert a.heads == max(1, width // cfg.head_dim), (width, a.heads)
