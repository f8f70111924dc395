"""The raw networks F_θ: base and super-resolution U-Nets on diffusers' ``UNet2DConditionModel``.

Base (App. A): ADM-style U-Net whose attention blocks run self-attention then cross-attention
over the conditioning tokens. Super-resolution: the same with the upsampled low-resolution image
concatenated to the input channels and its augmentation level in the global vector (Imagen's
noise conditioning augmentation).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from diffusers import ModelMixin, UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from torch import Tensor

from .attention import needs_python_attention
from .conditioning import Cond, ConditionProjector
from .precond import EDMPrecond


@dataclass(frozen=True)
class UNetConfig:
    """Sizes of one U-Net. ``attention`` says, per resolution level, whether it has attention."""

    channels: tuple[int, ...] = (32, 64, 128)  # block widths, one per resolution level
    layers_per_block: int = 1  # residual blocks per level (ADM: 3)
    attention: tuple[bool, ...] = (False, True, True)  # self+cross attention at this level
    width: int = 128  # cross-attention width all embeddings are projected to
    head_dim: int = 32  # channels per attention head
    norm_groups: int = 16  # GroupNorm groups; must divide every channel count


# Named presets: ``tiny`` (and ``tiny_attn``, attention at every level) for tests, ``mini`` for ediff-mini, ``paper`` for the Table 2-4 base.
PRESETS: dict[str, UNetConfig] = {
    "tiny": UNetConfig(channels=(16, 32), attention=(False, True), width=32, head_dim=16, norm_groups=8),
    "tiny_attn": UNetConfig(channels=(16, 32), attention=(True, True), width=32, head_dim=16, norm_groups=8),
    "mini": UNetConfig(),
    # ediff-mini with attention at 32² too, so paint-with-words' bias reaches full resolution
    # (App. A puts attention at ½, ¼ and ⅛ of the 64-px base; at 32 px, ½ is 16² and objects span 1–3 cells)
    "mini_attn32": UNetConfig(attention=(True, True, True)),
    # ediff-mini twice as wide (16.7 M parameters, 4x the FLOPs): #26's capacity probe at equal wall-clock
    "mini_wide": UNetConfig(channels=(64, 128, 256)),
    "mini_sr": UNetConfig(channels=(32, 48, 96), attention=(False, False, True), width=96, head_dim=32),
    "paper": UNetConfig(channels=(256, 512, 1024, 1024), layers_per_block=3, attention=(False, True, True, True), width=1024, head_dim=64, norm_groups=32),
}


class EDiffUNet(ModelMixin, ConfigMixin):
    """F_θ(x_in, c_noise, cond): projects the conditioning and runs the U-Net.

    Args:
        resolution: output side in pixels.
        channels, layers_per_block, attention, width, head_dim, norm_groups: see ``UNetConfig``.
        clip_dim, clip_pooled_dim, t5_dim, image_dim: encoder widths.
        lowres_channels: channels of the low-resolution input (0 = base model, 3 = super-resolution).
        aug_features: Fourier features of the augmentation level (0 = base model).
    """

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        resolution: int = 32,
        channels: tuple[int, ...] = (32, 64, 128),
        layers_per_block: int = 1,
        attention: tuple[bool, ...] = (False, True, True),
        width: int = 128,
        head_dim: int = 32,
        norm_groups: int = 16,
        clip_dim: int = 64,
        clip_pooled_dim: int = 128,
        t5_dim: int = 128,
        image_dim: int = 128,
        lowres_channels: int = 0,
        aug_features: int = 0,
    ):
        super().__init__()
        if len(channels) != len(attention):
            raise ValueError(f"channels {channels} and attention {attention} need one entry per level")
        self.projector = ConditionProjector(clip_dim, clip_pooled_dim, t5_dim, image_dim, width, aug_features)
        down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention)
        up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention))
        self.unet = UNet2DConditionModel(
            sample_size=resolution,
            in_channels=3 + lowres_channels,
            out_channels=3,
            down_block_types=down,
            up_block_types=up,
            block_out_channels=tuple(channels),
            layers_per_block=layers_per_block,
            cross_attention_dim=width,
            # diffusers reads ``attention_head_dim`` as the number of heads (diffusers#2011), so
            # pass heads per level: channels // head_dim, i.e. head_dim channels per head.
            attention_head_dim=tuple(max(1, c // head_dim) for c in channels),
            norm_num_groups=norm_groups,
            class_embed_type="projection",
            projection_class_embeddings_input_dim=self.projector.global_dim,
        )

    def forward(self, x_in: Tensor, c_noise: Tensor, cond: Cond) -> Tensor:
        if self.config.lowres_channels:
            if cond.lowres is None:
                raise ValueError("a super-resolution network needs cond.lowres (the upsampled low-resolution image)")
            x_in = torch.cat([x_in, cond.lowres.to(x_in.dtype)], dim=1)
        tokens, mask, global_vec = self.projector(cond)
        dtype = x_in.dtype
        kwargs = {}
        if needs_python_attention(cond):
            # Paint-with-words / attention recording (§4.3, Fig. 3): the processors read the
            # conditioning and σ = exp(4·c_noise), since c_noise = ¼·ln σ (§3).
            kwargs["cross_attention_kwargs"] = {"cond": cond, "sigma": torch.exp(4 * c_noise.float())}
        return self.unet(
            x_in,
            c_noise.to(dtype),
            encoder_hidden_states=tokens.to(dtype),
            class_labels=global_vec.to(dtype),
            encoder_attention_mask=mask,
            return_dict=False,
            **kwargs,
        )[0]


def build_unet(preset: str | UNetConfig, resolution: int, encoder_dims: dict[str, int], super_resolution: bool = False) -> EDiffUNet:
    """A fresh network from a preset; ``encoder_dims`` has clip_dim, clip_pooled_dim, t5_dim, image_dim."""
    cfg = PRESETS[preset] if isinstance(preset, str) else preset
    kw = asdict(cfg)
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in kw.items()}
    return EDiffUNet(
        resolution=resolution,
        **kw,
        **encoder_dims,
        lowres_channels=3 if super_resolution else 0,
        aug_features=32 if super_resolution else 0,
    )


def denoiser(net: EDiffUNet) -> EDMPrecond:
    """The preconditioned denoiser D(x, σ, cond) of a raw network."""
    return EDMPrecond(net)
