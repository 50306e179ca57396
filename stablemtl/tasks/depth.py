"""Depth: metric z-depth drawn as a grey image by a per-image affine map between two quantiles.

See docs/encodings.md.

The model learns affine-invariant depth: the 2% / 98% quantiles of each image go to -1 / +1, so the
decoded prediction in [0, 1] must be scale-and-shift aligned to metric depth at evaluation.
"""

from __future__ import annotations

import torch
from PIL import Image

from stablemtl.tasks.base import Task, batched, batched_image3, single_prediction, to_pil_rgb, unbatch
from stablemtl.tasks.registry import register_task


def masked_quantiles(values: torch.Tensor, mask: torch.Tensor, q: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Linear-interpolated ``q`` and ``1 - q`` quantiles of each row of ``values`` over ``mask``.

    ``values`` and ``mask`` are ``(B, N)``; returns two ``(B,)`` tensors, NaN for rows without a masked
    value. Same interpolation as ``torch.quantile``, which refuses rows over 2**24 values (large images).
    """
    count = mask.sum(dim=1)  # [B]
    # Masked-out entries sort last as +inf, so the first `count` entries of each row are the samples.
    ordered = torch.where(mask, values, torch.inf).sort(dim=1).values  # [B,N]
    last = (count - 1).clamp_min(0).to(values.dtype)

    def at(fraction: float) -> torch.Tensor:
        position = last * fraction
        below, above = position.floor().long(), position.ceil().long()
        low = ordered.gather(1, below[:, None])[:, 0]
        high = ordered.gather(1, above[:, None])[:, 0]
        result = torch.lerp(low, high, position - below.to(values.dtype))
        return torch.where(count > 0, result, torch.nan)

    return at(q), at(1.0 - q)


class DepthTask(Task):
    """Depth ``(1, H, W)`` in metres -> grey image3; prediction ``(B, 1, H, W)`` in [0, 1] (0 = near).

    Args:
        quantile: lower quantile ``q`` of the affine map; ``q`` and ``1 - q`` of the valid pixels with
            ``d > 0`` go to -1 and +1 (spec: 0.02).
        clip: clip the mapped valid pixels to [-1, 1] (spec: True).
        colormap: matplotlib colormap used by ``visualize``.
    """

    name = "depth"
    prompt = "depth"
    label_channels = 1
    prediction_channels = 1
    output_space = (
        "affine-invariant depth (B,1,H,W) in [0,1], 0 = near; align scale and shift before metric use"
    )
    metric_family = "depth"
    # A constant map: least-squares alignment turns it into the mean depth of each image.
    baseline_constant = (0.5,)
    primary_metric = "abs_rel"
    higher_is_better = False

    def __init__(self, quantile: float = 0.02, clip: bool = True, colormap: str = "Spectral") -> None:
        if not 0.0 <= quantile < 0.5:
            raise ValueError(f"quantile must be in [0, 0.5), got {quantile}")
        self.quantile = float(quantile)
        self.clip = bool(clip)
        self.colormap = colormap

    def encode(self, label: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Map depth to ``d' = (d - q_lo) / (q_hi - q_lo) * 2 - 1``, repeated over 3 channels.

        ``label`` ``(1, H, W)`` or ``(B, 1, H, W)`` metres, ``valid`` ``(H, W)`` or ``(B, H, W)`` bool.
        The quantiles are taken per image over valid pixels with ``d > 0``. Invalid pixels follow the same
        map but are always clipped, as in the official code (Hypersim's invalid 0 m lands on the near
        value -1, vKITTI's 655 m sky on the far value +1); NaN becomes -1. An image without any valid
        positive depth is -1 everywhere; a constant-depth image uses a span of 1 (its pixels map to -1).
        Returns ``image3`` of the label's batch shape with 3 channels, and ``valid`` minus non-finite pixels.
        """
        depth, valid, was_batched = batched(label, valid, self.label_channels, torch.float32)
        d = depth[:, 0]  # [B,H,W]
        reference = valid & (d > 0)
        low, high = masked_quantiles(d.flatten(1), reference.flatten(1), self.quantile)  # [B], [B]
        has_reference = reference.flatten(1).any(dim=1)
        span = high - low
        span = torch.where(has_reference & (span > 0), span, torch.ones_like(span))
        low = torch.where(has_reference, low, torch.zeros_like(low))
        mapped = (d - low[:, None, None]) / span[:, None, None] * 2.0 - 1.0  # [B,H,W]
        if self.clip:
            mapped = mapped.clamp(-1.0, 1.0)
        mapped = torch.where(valid, mapped, mapped.clamp(-1.0, 1.0))
        mapped = torch.where(has_reference[:, None, None], mapped, -1.0)
        # Overflow of a huge valid depth over a tiny span (clip=False) must not leak inf.
        mapped = torch.nan_to_num(mapped, nan=-1.0, posinf=1.0, neginf=-1.0)
        image3 = mapped.unsqueeze(1).repeat(1, 3, 1, 1)  # [B,3,H,W]
        return unbatch(image3, was_batched), unbatch(valid, was_batched)

    def decode(self, image3: torch.Tensor) -> torch.Tensor:
        """Mean of the 3 channels, clip to [-1, 1], then ``(x + 1) / 2``: ``(B, 1, H, W)`` in [0, 1].

        An unbatched ``(3, H, W)`` input gives ``(1, H, W)``.
        """
        image3, was_batched = batched_image3(image3)
        depth = (image3.mean(dim=1, keepdim=True).clamp(-1.0, 1.0) + 1.0) / 2.0
        return unbatch(depth, was_batched)

    def visualize(self, prediction: torch.Tensor) -> Image.Image:
        """Colour one affine-invariant depth map (``(1, H, W)`` or ``(H, W)`` in [0, 1]) with the colormap."""
        from matplotlib import colormaps  # imported here: only visualisation needs matplotlib

        depth = single_prediction(prediction, 1)[0].float().clamp(0.0, 1.0).numpy()
        return to_pil_rgb(colormaps[self.colormap](depth)[..., :3])


register_task(DepthTask())
