"""Tiny two-stream models for the multi-stream tests: SD-layout UNets (16 transformer blocks), random task
tokens of different lengths, random 12-channel UNet inputs, smooth test images."""

from __future__ import annotations

import copy

import torch
from diffusers import UNet2DConditionModel

from stablemtl.models.conv_in import widen_conv_in
from stablemtl.models.multistream import MultiStreamUNet
from stablemtl.models.task_attention import TaskAttention
from stablemtl.models.task_tokens import TaskEmbeddings
from stablemtl.testing import tiny_unet_config

TASKS = ("depth", "normal", "semantic", "optical_flow")


def tiny_unet(seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return widen_conv_in(UNet2DConditionModel(**tiny_unet_config()), 12).eval()


def task_tokens(tasks=TASKS, seed: int = 0) -> TaskEmbeddings:
    g = torch.Generator().manual_seed(seed)
    return TaskEmbeddings({t: torch.randn(2 + i % 3, 32, generator=g) for i, t in enumerate(tasks)})


def samples(tasks=TASKS, batch: int = 2, size: int = 8, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {t: torch.randn(batch, 12, size, size, generator=g) for t in tasks}


def randomize(module, seed: int = 2, scale: float = 0.3) -> None:
    """Give every parameter of a module (or of an iterable of parameters) random values, the
    zero-initialised output projections and LoRA gates included."""
    g = torch.Generator().manual_seed(seed)
    parameters = module.parameters() if isinstance(module, torch.nn.Module) else module
    with torch.no_grad():
        for p in parameters:
            p.copy_(torch.randn(p.shape, generator=g) * scale)


def frames(count: int = 2, seed: int = 0, size: tuple[int, int] = (32, 40)) -> torch.Tensor:
    """Smooth random images ``(count, 3, *size)`` in [0, 1] (upsampled noise, like a blurry photo)."""
    coarse = torch.rand(count, 3, 4, 5, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.interpolate(coarse, size, mode="bilinear", align_corners=False)


def build(tasks=TASKS, seed: int = 0, **kwargs) -> tuple[MultiStreamUNet, UNet2DConditionModel]:
    """(multi-stream model, an untouched copy of the stage-1 UNet with stock processors)."""
    stage1 = tiny_unet(seed)
    single = copy.deepcopy(stage1)
    attention_kwargs = {k: kwargs.pop(k) for k in ("layers", "n_heads", "fusion") if k in kwargs}
    task_attention = TaskAttention.from_unet(stage1, list(tasks), query_hidden_dim=16, **attention_kwargs)
    model = MultiStreamUNet(copy.deepcopy(stage1), stage1, task_attention, **kwargs)
    return model, single
