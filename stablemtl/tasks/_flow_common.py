"""Shared by optical and scene flow: per-image, per-axis max-abs normalisation (docs/encodings.md)."""

from __future__ import annotations

import torch


def normalize_per_axis(vectors: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Divide each axis of each image by its largest absolute value over the valid pixels.

    ``vectors`` ``(B, C, H, W)`` float, ``valid`` ``(B, H, W)`` bool. Invalid pixels are set to 0 first
    (so the max over the whole image equals the max over valid pixels, as in the official code). An axis
    whose max is 0 stays 0 instead of dividing by zero. Returns the normalised field in [-1, 1] and the
    ``(B, C)`` scales, so that ``normalised * scale`` restores the valid vectors.
    """
    zeroed = torch.where(valid[:, None], vectors, 0.0)
    scale = zeroed.abs().amax(dim=(-2, -1))  # [B,C]
    divisor = torch.where(scale > 0, scale, torch.ones_like(scale))[..., None, None]
    # Division by the max keeps |x| <= 1 in exact arithmetic; the clamp guards float rounding.
    return (zeroed / divisor).clamp(-1.0, 1.0), scale
