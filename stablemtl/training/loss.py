"""The unified masked latent MSE of StableMTL (docs/training.md): one loss for every task."""

from __future__ import annotations

import torch


def masked_latent_mse(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the valid latent cells.

    Args:
        prediction, target: ``(B, C, h, w)`` latents.
        mask: ``(B, h, w)`` bool, a cell is valid when all pixels under it are (``Task.latent_valid_mask``);
            it applies to every latent channel.

    Returns:
        A scalar: the mean over valid elements, in float32; exactly 0 (still differentiable) when no
        cell is valid, so that an all-invalid micro-batch contributes no gradient instead of NaN.
    """
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ")
    if mask.shape != (prediction.shape[0], *prediction.shape[2:]):
        raise ValueError(f"mask {tuple(mask.shape)} does not match latents {tuple(prediction.shape)}")
    weight = mask.unsqueeze(1).to(torch.float32).expand_as(prediction)
    squared = (prediction.float() - target.float()).square() * weight
    return squared.sum() / weight.sum().clamp_min(1.0)
