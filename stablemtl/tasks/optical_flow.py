"""Optical flow: pixel displacements, normalised per image and per axis, drawn as ``[u, v, u]``.

See docs/encodings.md.

The magnitude is lost by the normalisation; evaluation aligns each axis of the prediction to the
ground truth. Needs the next frame as a second input.
"""

from __future__ import annotations

import torch
from PIL import Image

from stablemtl.tasks._flow_common import normalize_per_axis
from stablemtl.tasks.base import Task, batched, batched_image3, single_prediction, unbatch
from stablemtl.tasks.registry import register_task


class OpticalFlowTask(Task):
    """Flow ``(2, H, W)`` pixels (u right, v down) -> image3 ``[u', v', u']``;
    prediction ``(B, 2, H, W)`` per-axis normalised in [-1, 1]."""

    name = "optical_flow"
    prompt = "optical flow"
    label_channels = 2
    prediction_channels = 2
    output_space = "optical flow (B,2,H,W) per-axis normalised to [-1,1] (u right, v down); needs a pair"
    metric_family = "optical_flow"
    baseline_constant = (0.0, 0.0)  # no motion
    needs_pair = True
    primary_metric = "epe"
    higher_is_better = False
    hflip_signs = (-1.0, 1.0)
    vflip_signs = (1.0, -1.0)

    def encode(self, label: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``u / max|u|`` and ``v / max|v|`` over valid pixels, stored as ``[u, v, u]``; invalid pixels are 0.

        ``label`` ``(2, H, W)`` or ``(B, 2, H, W)``; ``valid`` loses non-finite pixels.
        """
        flow, valid, was_batched = batched(label, valid, self.label_channels, torch.float32)
        normalized, _ = normalize_per_axis(flow, valid)  # [B,2,H,W]
        image3 = torch.cat([normalized, normalized[:, :1]], dim=1)  # [B,3,H,W]
        return unbatch(image3, was_batched), unbatch(valid, was_batched)

    def decode(self, image3: torch.Tensor) -> torch.Tensor:
        """Channels 0 and 1 clipped to [-1, 1]: ``(B, 2, H, W)`` per-axis normalised flow."""
        image3, was_batched = batched_image3(image3)
        return unbatch(image3[:, :2].clamp(-1.0, 1.0), was_batched)

    def visualize(self, prediction: torch.Tensor) -> Image.Image:
        """Draw one ``(2, H, W)`` flow with the standard flow colour wheel (scaled by its largest vector)."""
        import flow_vis  # imported here: only visualisation needs it

        flow = single_prediction(prediction, 2).float().nan_to_num(0.0)
        return Image.fromarray(flow_vis.flow_to_color(flow.permute(1, 2, 0).numpy()))


register_task(OpticalFlowTask())
