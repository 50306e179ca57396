"""Widen the UNet's first convolution to take StableMTL's stacked latents (docs/architecture.md)."""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel


def widen_conv_in(unet: UNet2DConditionModel, in_channels: int = 12) -> UNet2DConditionModel:
    """Replace ``unet.conv_in`` by one taking ``in_channels`` inputs, in place, and return ``unet``.

    The pretrained ``[C_out, 4, k, k]`` weight is tiled ``in_channels / 4`` times along the input channels and
    divided by that factor (12 channels: tiled x3, scaled 1/3); the bias is kept. So on an input whose channel
    groups are equal, ``[z, z, z]``, the widened layer computes exactly what the pretrained one computed on
    ``z``: the model starts from its pretrained function. ``unet.config.in_channels`` is updated, so
    ``save_pretrained``/``from_pretrained`` round-trip the new shape.
    """
    old = unet.conv_in
    if in_channels == old.in_channels:
        return unet
    if in_channels < old.in_channels or in_channels % old.in_channels:
        raise ValueError(
            f"in_channels={in_channels} must be a multiple of the current {old.in_channels} input channels"
        )
    repeats = in_channels // old.in_channels
    new = torch.nn.Conv2d(
        in_channels,
        old.out_channels,
        kernel_size=old.kernel_size,
        stride=old.stride,
        padding=old.padding,
        dilation=old.dilation,
        groups=old.groups,
        bias=old.bias is not None,
        padding_mode=old.padding_mode,
        device=old.weight.device,
        dtype=old.weight.dtype,
    )
    with torch.no_grad():
        new.weight.copy_(old.weight.repeat(1, repeats, 1, 1) / repeats)
        if old.bias is not None:
            new.bias.copy_(old.bias)
    new.weight.requires_grad_(old.weight.requires_grad)
    if new.bias is not None:
        new.bias.requires_grad_(old.bias.requires_grad)
    unet.conv_in = new
    unet.register_to_config(in_channels=in_channels)
    return unet
