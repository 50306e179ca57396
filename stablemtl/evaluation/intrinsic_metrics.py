"""Albedo and shading metrics: scale-invariant RMSE, LMSE and masked SSIM, averaged over images.

Per image (docs/evaluation.md, with the mask honoured everywhere):
1. one global least-squares scale ``s = <p, g> / <p, p>`` over valid pixels and all channels, then
   ``p' = clip(s·p, 0, 1)``;
2. ``si_rmse = sqrt(mean over valid pixels and channels of (p' − g)²)``;
3. ``lmse``: windows of 16 px with stride 8; in each window and channel its own LS scale ``α``; the
   sum of ``mask·(g − α·p')²`` over windows and channels divided by the sum of ``mask·g²``;
4. ``ssim``: the scikit-image SSIM map (data range 1, 7x7 uniform window; invalid pixels zeroed in both
   images) averaged over valid pixels away from the border (with an all-valid mask this equals
   ``skimage.metrics.structural_similarity``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from skimage.metrics import structural_similarity

from stablemtl.evaluation.base import DenseMetric

LMSE_WINDOW = 16
LMSE_STRIDE = 8


def global_scale(prediction: torch.Tensor, target: torch.Tensor) -> float:
    """LS scale ``argmin_s ‖s·p − g‖²`` over all given values (0 for an all-zero prediction)."""
    p, g = prediction.double(), target.double()
    pp = float((p * p).sum())
    return float((p * g).sum()) / pp if pp > 0 else 0.0


def lmse(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> float:
    """Local MSE of ``(C, H, W)`` tensors with an ``(H, W)`` mask (windows 16, stride 8, per-window scale).

    Images smaller than a window are scored as one window. Returns NaN when ``Σ mask·g²`` is 0.
    """
    c, h, w = target.shape
    win_h, win_w = min(LMSE_WINDOW, h), min(LMSE_WINDOW, w)
    m = mask.double().expand(c, h, w).unsqueeze(1)  # [C,1,H,W]: each channel is its own "image"
    p = prediction.double().unsqueeze(1) * m
    g = target.double().unsqueeze(1) * m

    def windows(x: torch.Tensor) -> torch.Tensor:  # [C, window pixels, num windows]
        return F.unfold(x, kernel_size=(win_h, win_w), stride=LMSE_STRIDE)

    pw, gw, mw = windows(p), windows(g), windows(m)
    pp = (pw * pw).sum(1)
    alpha = torch.where(pp > 0, (pw * gw).sum(1) / pp.clamp(min=1e-300), torch.zeros_like(pp))
    error = ((gw - alpha.unsqueeze(1) * pw) ** 2 * mw).sum()
    total = (gw * gw * mw).sum()
    return float(error / total) if float(total) > 0 else math.nan


def masked_ssim(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean of the skimage SSIM map of ``(C, H, W)`` images in [0, 1] over valid non-border pixels.

    Invalid pixels are set to 0 in both images first; with an all-valid ``(H, W)`` mask the result is
    ``skimage.metrics.structural_similarity``.
    """
    h, w = target.shape[-2:]
    win = min(7, h, w)
    win -= 1 - win % 2  # odd
    if win < 3:
        return math.nan
    # Invalid pixels are zeroed in both images, so a prediction there cannot change the score.
    zero = torch.zeros((), dtype=torch.float64)
    p = torch.where(mask, prediction.double(), zero).permute(1, 2, 0).cpu().numpy()
    g = torch.where(mask, target.double(), zero).permute(1, 2, 0).cpu().numpy()
    _, smap = structural_similarity(g, p, win_size=win, data_range=1.0, channel_axis=2, full=True)
    keep = mask.cpu().numpy().copy()
    pad = (win - 1) // 2
    # skimage's own mean skips a border of (win-1)/2 where the window leaves the image; so do we.
    border = np.zeros_like(keep)
    border[pad : h - pad, pad : w - pad] = True
    keep &= border
    if not keep.any():
        return math.nan
    return float(smap.mean(axis=2)[keep].mean())


class IntrinsicImageMetrics(DenseMetric):
    """Albedo (3 channels) or shading (1 channel) in [0, 1]: ``si_rmse``, ``lmse``, ``ssim`` per image,
    averaged over images.

    Args:
        channels: label channels (3 for albedo, 1 for shading).
    """

    def __init__(self, channels: int, **kw) -> None:
        super().__init__(**kw)
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 (shading) or 3 (albedo), got {channels}")
        self.label_channels = channels
        for name in ("si_rmse", "lmse", "ssim"):
            self.add_state(f"sum_{name}", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"num_{name}", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def metric_names(self) -> list[str]:
        return ["si_rmse", "lmse", "ssim"]

    def config(self) -> dict:
        return {
            "scale": "one global least-squares scale per image, then clip to [0, 1]",
            "lmse_window": LMSE_WINDOW,
            "lmse_stride": LMSE_STRIDE,
            "ssim": "skimage SSIM map (7x7 uniform, data range 1) averaged over valid pixels",
        }

    def _update_image(self, prediction: torch.Tensor, label: torch.Tensor, valid: torch.Tensor) -> bool:
        if not bool(valid.any()):
            return False
        # Invalid pixels may hold NaN; zero them so that masked sums and the SSIM windows stay finite.
        pred = torch.nan_to_num(prediction.double())
        gt = torch.where(valid, label.double(), torch.zeros((), dtype=torch.float64))
        scale = global_scale(pred[:, valid], gt[:, valid])
        aligned = (scale * pred).clamp(0.0, 1.0)
        values = {
            "si_rmse": float(((aligned - gt)[:, valid] ** 2).mean().sqrt()),
            "lmse": lmse(aligned, gt, valid),
            "ssim": masked_ssim(aligned, gt.clamp(0.0, 1.0), valid),
        }
        # A value can be undefined for one image (e.g. SSIM of a 2-px image): average over the others.
        for name, value in values.items():
            if not math.isnan(value):
                setattr(self, f"sum_{name}", getattr(self, f"sum_{name}") + value)
                setattr(self, f"num_{name}", getattr(self, f"num_{name}") + 1)
        return True

    def _compute(self) -> dict[str, torch.Tensor]:
        return {
            name: getattr(self, f"sum_{name}") / getattr(self, f"num_{name}").clamp(min=1)
            if int(getattr(self, f"num_{name}")) > 0
            else torch.tensor(math.nan)
            for name in self.metric_names()
        }
