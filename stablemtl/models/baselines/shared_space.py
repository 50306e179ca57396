"""The vector-quantised shared space of the task-prototype baseline (prototype paper §3).

A ResNet encoder on the stacked frame pair gives f_e (its four stages fused at stride 8); each position is
replaced by its nearest entry of a learnable K-entry codebook, f_q, with the straight-through estimator;
the integrated feature f_i = f_e + f_q feeds the task decoders. The task-agnostic enhancement (TAE)
decoder reconstructs the encoder input from f_i, so the shared space keeps generic image content even for
tasks without labels. See docs/baselines-prototype.md for the choices the paper leaves open.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.vae import VectorQuantizer
from torch import nn

from stablemtl.models.baselines.backbones import ResNetEncoder


def norm(channels: int) -> nn.GroupNorm:
    """GroupNorm, not BatchNorm, in the baseline's own layers: micro-batches hold a few images."""
    return nn.GroupNorm(math.gcd(32, channels), channels)


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 convolution, GroupNorm, ReLU."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1), norm(out_channels), nn.ReLU())


class TAEReconstruction(nn.Module):
    """TAE decoder: f_i ``[B, c, h, w]`` -> the encoder input ``[B, in_channels, H, W]`` (no activation)."""

    def __init__(self, channels: int, out_channels: int, width: int = 64):
        super().__init__()
        self.coarse = conv_block(channels, width)
        self.fine = conv_block(width, width // 2)
        self.out = nn.Conv2d(width // 2, out_channels, 1)

    def forward(self, features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        x = self.coarse(features)
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        x = self.fine(x)
        return self.out(F.interpolate(x, size=size, mode="bilinear", align_corners=False))


class QuantisedSharedSpace(nn.Module):
    """Stacked input ``[B, 6, H, W]`` in [0, 1] -> f_i ``[B, c, H/8, W/8]`` plus the TAE and VQ losses.

    Args:
        backbone_config: ``ResNetConfig`` dict of the encoder (6 input channels).
        feature_channels: c, width of f_e, f_q and f_i.
        codebook_size: K, codebook entries.
        commitment_beta: weight of the commitment term inside the VQ loss.
        seed: seeds the encoder's initialisation.
    """

    def __init__(
        self,
        backbone_config: Mapping[str, Any],
        feature_channels: int = 256,
        codebook_size: int = 4096,
        commitment_beta: float = 0.25,
        seed: int = 0,
    ):
        super().__init__()
        for name, value in (("feature_channels", feature_channels), ("codebook_size", codebook_size)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if commitment_beta < 0:
            raise ValueError(f"commitment_beta must be >= 0, got {commitment_beta}")
        self.encoder = ResNetEncoder(backbone_config, seed=seed)
        if self.encoder.in_channels != 6:
            raise ValueError(f"backbone_config must have 6 input channels, got {self.encoder.in_channels}")
        self.lateral = nn.ModuleList(nn.Conv2d(c, feature_channels, 1) for c in self.encoder.channels)
        self.fuse = nn.Conv2d(feature_channels, feature_channels, 3, padding=1)
        # legacy=False: beta weighs the commitment term, as in VQ-VAE (diffusers keeps a legacy swap).
        self.quantizer = VectorQuantizer(codebook_size, feature_channels, beta=commitment_beta, legacy=False)
        self.reconstruction = TAEReconstruction(feature_channels, self.encoder.in_channels)

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (f_i ``[B, c, h, w]``, SmoothL1 reconstruction loss, codebook + beta * commitment loss)."""
        stages = self.encoder(inputs)
        size = stages[1].shape[-2:]  # stride 8
        fused = sum(
            lateral(x) if x.shape[-2:] == size
            else F.interpolate(lateral(x), size=size, mode="bilinear", align_corners=False)
            for lateral, x in zip(self.lateral, stages)
        )  # fmt: skip
        encoded = self.fuse(fused)  # f_e
        # diffusers' VectorQuantizer returns z + sg(z_q - z): the straight-through estimator.
        quantized, vq_loss, _ = self.quantizer(encoded)  # f_q
        integrated = encoded + quantized  # f_i
        reconstructed = self.reconstruction(integrated, inputs.shape[-2:])
        return integrated, F.smooth_l1_loss(reconstructed, inputs), vq_loss
