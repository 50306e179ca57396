"""Shading: grey linear shading in [0, 1], repeated over 3 channels (docs/encodings.md)."""

from __future__ import annotations

import torch
from PIL import Image

from stablemtl.tasks.base import Task, batched, batched_image3, single_prediction, to_pil_rgb, unbatch
from stablemtl.tasks.registry import register_task

# Luminance weights of the official get_brightness (docs/encodings.md), applied to RGB shading.
LUMINANCE_WEIGHTS = (0.3, 0.59, 0.11)


class ShadingTask(Task):
    """Shading ``(1, H, W)`` grey (or ``(3, H, W)`` RGB) in [0, 1] -> image3 ``Y * 2 - 1`` repeated 3 times;
    prediction ``(B, 1, H, W)`` in [0, 1].

    Args:
        luminance_weights: weights of R, G, B when the label has 3 channels.
    """

    name = "shading"
    prompt = "shading"
    label_channels = 1
    prediction_channels = 1
    output_space = "grey shading (B,1,H,W) in [0,1]"
    metric_family = "intrinsic_image"
    # Mid-grey: the scale alignment of the metrics then picks the best constant.
    baseline_constant = (0.5,)
    primary_metric = "si_rmse"
    higher_is_better = False

    def __init__(self, luminance_weights: tuple[float, float, float] = LUMINANCE_WEIGHTS) -> None:
        if len(luminance_weights) != 3:
            raise ValueError(f"luminance_weights must hold 3 values (R, G, B), got {luminance_weights}")
        self.luminance_weights = tuple(float(w) for w in luminance_weights)

    def grey(self, label: torch.Tensor) -> torch.Tensor:
        """``(B, 1 or 3, H, W)`` -> ``(B, 1, H, W)``: the grey channel itself, or the weighted luminance."""
        if label.shape[1] == 1:
            return label
        weights = torch.tensor(self.luminance_weights, dtype=label.dtype, device=label.device)
        return (label * weights[None, :, None, None]).sum(dim=1, keepdim=True)

    def encode(self, label: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``Y * 2 - 1`` clipped to [-1, 1] and repeated over 3 channels.

        ``label`` ``(C, H, W)`` or ``(B, C, H, W)`` with C = 1 (grey) or 3 (RGB, reduced to luminance).
        Invalid pixels keep their encoded value; NaN becomes -1 and ±inf is clipped to ±1.
        ``valid`` loses pixels with any non-finite channel.
        """
        label, valid, was_batched = batched(label, valid, dtype=torch.float32)
        if label.shape[1] not in (1, 3):
            raise ValueError(f"shading label must have 1 (grey) or 3 (RGB) channels, got {label.shape[1]}")
        grey = (self.grey(label) * 2.0 - 1.0).clamp(-1.0, 1.0).nan_to_num(-1.0)  # [B,1,H,W]
        image3 = grey.repeat(1, 3, 1, 1)  # [B,3,H,W]
        return unbatch(image3, was_batched), unbatch(valid, was_batched)

    def decode(self, image3: torch.Tensor) -> torch.Tensor:
        """Mean of the 3 channels, clip to [-1, 1], then ``(x + 1) / 2``: ``(B, 1, H, W)`` in [0, 1]."""
        image3, was_batched = batched_image3(image3)
        return unbatch((image3.mean(dim=1, keepdim=True).clamp(-1.0, 1.0) + 1.0) / 2.0, was_batched)

    def visualize(self, prediction: torch.Tensor) -> Image.Image:
        """Show one ``(1, H, W)`` or ``(H, W)`` shading in [0, 1] as a grey RGB image."""
        grey = single_prediction(prediction, 1).float()
        return to_pil_rgb(grey.repeat(3, 1, 1).permute(1, 2, 0))


register_task(ShadingTask())
