"""Albedo: linear diffuse reflectance in [0, 1], drawn directly as an RGB image (docs/encodings.md)."""

from __future__ import annotations

import torch
from PIL import Image

from stablemtl.tasks.base import Task, batched, batched_image3, single_prediction, to_pil_rgb, unbatch
from stablemtl.tasks.registry import register_task


class AlbedoTask(Task):
    """Albedo ``(3, H, W)`` in [0, 1] -> image3 ``x * 2 - 1``; prediction ``(B, 3, H, W)`` in [0, 1]."""

    name = "albedo"
    prompt = "albedo"
    label_channels = 3
    prediction_channels = 3
    output_space = "linear albedo (B,3,H,W) in [0,1]"
    metric_family = "intrinsic_image"
    # Mid-grey: the scale alignment of the metrics then picks the best constant.
    baseline_constant = (0.5, 0.5, 0.5)
    primary_metric = "si_rmse"
    higher_is_better = False

    def encode(self, label: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x * 2 - 1`` clipped to [-1, 1], for ``(3, H, W)`` or ``(B, 3, H, W)`` labels.

        Invalid pixels keep their encoded value (the official code only masks them in the loss);
        NaN becomes -1 (black) and ±inf is clipped to ±1. ``valid`` loses non-finite pixels.
        """
        albedo, valid, was_batched = batched(label, valid, self.label_channels, torch.float32)
        image3 = (albedo * 2.0 - 1.0).clamp(-1.0, 1.0).nan_to_num(-1.0)  # [B,3,H,W]
        return unbatch(image3, was_batched), unbatch(valid, was_batched)

    def decode(self, image3: torch.Tensor) -> torch.Tensor:
        """Clip to [-1, 1], then ``(x + 1) / 2``: ``(B, 3, H, W)`` in [0, 1]."""
        image3, was_batched = batched_image3(image3)
        return unbatch((image3.clamp(-1.0, 1.0) + 1.0) / 2.0, was_batched)

    def visualize(self, prediction: torch.Tensor) -> Image.Image:
        """Show one ``(3, H, W)`` albedo in [0, 1] as it is (linear values, no gamma)."""
        return to_pil_rgb(single_prediction(prediction, 3).float().permute(1, 2, 0))


register_task(AlbedoTask())
