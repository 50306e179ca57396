"""Scene flow: 3D motion in metres, normalised per image and per axis, drawn as ``[x, y, z]``.

See docs/encodings.md.

The label is in the OpenCV camera frame (x right, y down, z forward): the position of a surface point in
the frame-t+1 camera minus its position in the frame-t camera. A horizontal image flip negates x and a
vertical flip negates y. Needs the next frame as a second input.
"""

from __future__ import annotations

import torch
from PIL import Image

from stablemtl.tasks._flow_common import normalize_per_axis
from stablemtl.tasks.base import Task, batched, batched_image3, single_prediction, to_pil_rgb, unbatch
from stablemtl.tasks.registry import register_task


class SceneFlowTask(Task):
    """Scene flow ``(3, H, W)`` metres -> image3 ``[x', y', z']``;
    prediction ``(B, 3, H, W)`` per-axis normalised in [-1, 1]."""

    name = "scene_flow"
    prompt = "scene flow"
    label_channels = 3
    prediction_channels = 3
    output_space = "scene flow (B,3,H,W) per-axis normalised to [-1,1] (OpenCV camera axes); needs a pair"
    metric_family = "scene_flow"
    baseline_constant = (0.0, 0.0, 0.0)  # no motion
    needs_pair = True
    primary_metric = "epe3d"
    higher_is_better = False
    hflip_signs = (-1.0, 1.0, 1.0)
    vflip_signs = (1.0, -1.0, 1.0)

    def encode(self, label: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each axis divided by its max-abs over valid pixels; invalid pixels are 0.

        ``label`` ``(3, H, W)`` or ``(B, 3, H, W)``; ``valid`` loses non-finite pixels.
        """
        flow, valid, was_batched = batched(label, valid, self.label_channels, torch.float32)
        image3, _ = normalize_per_axis(flow, valid)  # [B,3,H,W]
        return unbatch(image3, was_batched), unbatch(valid, was_batched)

    def decode(self, image3: torch.Tensor) -> torch.Tensor:
        """All 3 channels clipped to [-1, 1]: ``(B, 3, H, W)`` per-axis normalised scene flow."""
        image3, was_batched = batched_image3(image3)
        return unbatch(image3.clamp(-1.0, 1.0), was_batched)

    def visualize(self, prediction: torch.Tensor) -> Image.Image:
        """Draw one ``(3, H, W)`` scene flow as RGB ``(s + 1) / 2`` per axis (grey = no motion).

        RGB rather than the 2D flow wheel because the forward motion z, usually the largest component
        when driving, would be invisible on the wheel.
        """
        flow = single_prediction(prediction, 3).float().clamp(-1.0, 1.0)
        return to_pil_rgb(((flow + 1.0) / 2.0).permute(1, 2, 0))


register_task(SceneFlowTask())
