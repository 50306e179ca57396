"""Shared convolutional encoder of the CNN baselines: ResNet-18 from ``transformers``, multi-scale features.

Both CNN baselines (HiTT, task-prototype retrieval) use a ResNet-18, as in HiTT paper Table 15 (the
DiffusionMTL protocol). The network is ``transformers.ResNetBackbone`` (no torchvision/timm here).
Offline it starts from random weights built from ``resnet18_config``; a user who has an ImageNet-pretrained
ResNet (a Hub id such as ``microsoft/resnet-18``, or a local folder) loads it with
``ResNetEncoder.from_pretrained``.

Input channels. ``in_channels`` = 3 is one RGB frame; 6 is a frame pair stacked along channels, for models
that give the flow tasks their own stacked input. With pretrained weights the 7x7 stem convolution is
inflated by repeating its RGB kernel over each stacked frame and dividing by the number of frames, so a pair
of identical frames reproduces the pretrained response exactly (the usual inflation for two-frame input).
(HiTT in this toolkit keeps one 3-channel encoder and runs it on each frame instead; see ``hitt.py``.)

Images enter in [0, 1] and are normalised with the ImageNet mean/std inside ``forward`` (repeated per
stacked frame), the statistics every ImageNet ResNet was trained with.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from transformers import ResNetBackbone, ResNetConfig

STAGES = ("stage1", "stage2", "stage3", "stage4")
STRIDES = (4, 8, 16, 32)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resnet18_config(in_channels: int = 3) -> ResNetConfig:
    """The ResNet-18 layout (basic blocks, depths 2-2-2-2, widths 64-128-256-512), all four stages out."""
    if in_channels < 1 or in_channels % 3 != 0:
        raise ValueError(f"in_channels must be a positive multiple of 3 (RGB frames), got {in_channels}")
    return ResNetConfig(
        num_channels=in_channels,
        embedding_size=64,
        hidden_sizes=[64, 128, 256, 512],
        depths=[2, 2, 2, 2],
        layer_type="basic",
        out_features=list(STAGES),
    )


class ResNetEncoder(nn.Module):
    """Images ``[B, in_channels, H, W]`` in [0, 1] -> four feature maps at strides 4, 8, 16, 32.

    ``forward`` returns a list ``[B, C_j, ceil(H/s_j), ceil(W/s_j)]`` with ``C_j = channels[j]``
    (64, 128, 256, 512 for ResNet-18) and ``s_j = strides[j]``. ``config_dict()`` records the architecture
    so a saved model rebuilds the encoder (then loads its weights) without the original checkpoint.
    """

    def __init__(self, config: ResNetConfig | Mapping[str, Any] | None = None, seed: int = 0):
        super().__init__()
        if config is None:
            config = resnet18_config()
        elif isinstance(config, Mapping):
            config = ResNetConfig.from_dict(dict(config))
        if list(config.out_features) != list(STAGES):
            config.out_features = list(STAGES)
        # transformers initialises from the global RNG; fork it so construction is reproducible and
        # leaves the caller's RNG untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.backbone = ResNetBackbone(config)
        self._register_normalisation(config.num_channels)

    def _register_normalisation(self, in_channels: int) -> None:
        frames = in_channels // 3
        mean = torch.tensor(IMAGENET_MEAN * frames).view(1, in_channels, 1, 1)
        std = torch.tensor(IMAGENET_STD * frames).view(1, in_channels, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    @classmethod
    def from_pretrained(
        cls, name_or_path: str, in_channels: int = 3, local_files_only: bool = False
    ) -> ResNetEncoder:
        """Encoder with a pretrained ResNet's weights (Hub id or folder), stem inflated to ``in_channels``.

        Any ResNet checkpoint ``transformers`` reads works (its widths decide ``channels``). Nothing is
        downloaded unless the user names a Hub id that is not cached; ``local_files_only`` forbids that.
        """
        resnet18_config(in_channels)  # validates in_channels
        backbone = ResNetBackbone.from_pretrained(
            name_or_path, out_features=list(STAGES), local_files_only=local_files_only
        )
        frames = in_channels // backbone.config.num_channels
        if frames * backbone.config.num_channels != in_channels:
            raise ValueError(
                f"in_channels={in_channels} is not a multiple of the checkpoint's "
                f"{backbone.config.num_channels} input channels"
            )
        if frames > 1:
            _inflate_stem(backbone, frames)
        encoder = cls.__new__(cls)
        nn.Module.__init__(encoder)
        encoder.backbone = backbone
        encoder._register_normalisation(in_channels)
        return encoder

    @property
    def in_channels(self) -> int:
        return int(self.backbone.config.num_channels)

    @property
    def channels(self) -> tuple[int, ...]:
        return tuple(int(c) for c in self.backbone.config.hidden_sizes)

    @property
    def strides(self) -> tuple[int, ...]:
        return STRIDES

    def config_dict(self) -> dict[str, Any]:
        """JSON-serialisable architecture (``ResNetConfig.to_dict``) to rebuild this encoder."""
        return self.backbone.config.to_dict()

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        if images.ndim != 4 or images.shape[1] != self.in_channels:
            raise ValueError(
                f"images must be [B, {self.in_channels}, H, W] in [0, 1], got {tuple(images.shape)}"
            )
        x = (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)
        return list(self.backbone(x).feature_maps)


def _inflate_stem(backbone: ResNetBackbone, frames: int) -> None:
    """Repeat the stem kernel over ``frames`` stacked frames, divided by ``frames`` (see module doc)."""
    stem = backbone.embedder.embedder.convolution
    weight = stem.weight.data.repeat(1, frames, 1, 1) / frames
    inflated = nn.Conv2d(
        weight.shape[1],
        stem.out_channels,
        stem.kernel_size,
        stem.stride,
        stem.padding,
        bias=stem.bias is not None,
    )
    inflated.weight.data.copy_(weight)
    if stem.bias is not None:
        inflated.bias.data.copy_(stem.bias.data)
    backbone.embedder.embedder.convolution = inflated
    backbone.embedder.num_channels = weight.shape[1]
    backbone.config.num_channels = weight.shape[1]
