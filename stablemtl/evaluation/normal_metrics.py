"""Surface-normal metrics: angular error in degrees over the valid pixels (docs/evaluation.md).

``mean_angular_error`` follows the official protocol: the mean over the valid pixels of each image,
then averaged
over images. Every other value pools all valid pixels of the data set. All states are sums (DDP-safe);
the median comes from a histogram of 0.01° bins (constant memory) with linear interpolation inside the
bin, so it is exact to within 0.01°.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from stablemtl.evaluation.base import DenseMetric

THRESHOLDS_DEG = (11.25, 22.5, 30.0)
_BIN_DEG = 0.01
_NUM_BINS = round(180.0 / _BIN_DEG)


def angular_error_deg(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Angle in degrees between ``(N, 3)`` vectors after normalising both (clamped cosine, float64)."""
    p = F.normalize(prediction.double(), dim=-1)
    g = F.normalize(target.double(), dim=-1)
    return torch.rad2deg(torch.acos((p * g).sum(-1).clamp(-1.0, 1.0)))


def histogram_median(counts: torch.Tensor, bin_width: float) -> float:
    """Median of values binned in ``counts`` (bins ``[k·w, (k+1)·w)``), linearly interpolated in the bin."""
    total = float(counts.sum())
    cumulative = counts.double().cumsum(0)
    half = total / 2.0
    k = int(torch.searchsorted(cumulative, torch.tensor([half], dtype=torch.float64))[0])
    below = float(cumulative[k - 1]) if k > 0 else 0.0
    inside = float(counts[k])
    return (k + (half - below) / inside) * bin_width


class NormalMetrics(DenseMetric):
    """Normals: angular errors in degrees and ``within_11.25`` etc. (% of pixels).

    Prediction ``(B, 3, h, w)`` (renormalised after the bilinear resize), label ``(B, 3, H, W)`` unit
    vectors; pixels whose label has norm at most 0.5 are invalid. How each value is pooled:

    - ``mean_angular_error``: mean over the valid pixels of each image, averaged over images (the official
      metric, so an image with few valid pixels weighs as much as a full one);
    - ``mean_angular_error_pooled``: mean over all valid pixels of the data set;
    - ``median_angular_error``, ``rmse_angular_error``, ``within_*``: over all valid pixels of the data set.
    """

    label_channels = 3

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        # Per image: the sum of the per-image means; the image count is the base class's num_images.
        self.add_state("sum_image_mean", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        # Pooled over pixels.
        self.add_state("sum_error", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("sum_sq_error", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("num_pixels", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("num_within", torch.zeros(len(THRESHOLDS_DEG), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("histogram", torch.zeros(_NUM_BINS, dtype=torch.long), dist_reduce_fx="sum")

    def metric_names(self) -> list[str]:
        return [
            "mean_angular_error",
            "mean_angular_error_pooled",
            "median_angular_error",
            "rmse_angular_error",
            *[f"within_{t:g}" for t in THRESHOLDS_DEG],
        ]

    def config(self) -> dict:
        return {
            "pooling": "mean_angular_error: per image, averaged over images; others: pixels of the data set",
            "median_bin_deg": _BIN_DEG,
        }

    def _update_image(self, prediction: torch.Tensor, label: torch.Tensor, valid: torch.Tensor) -> bool:
        valid = valid & (label.double().norm(dim=0) > 0.5)
        if not bool(valid.any()):
            return False
        err = angular_error_deg(prediction.permute(1, 2, 0)[valid], label.permute(1, 2, 0)[valid])
        self.sum_image_mean += err.mean()
        self.sum_error += err.sum()
        self.sum_sq_error += (err**2).sum()
        self.num_pixels += err.numel()
        self.num_within += torch.stack([(err < t).sum() for t in THRESHOLDS_DEG])
        bins = (err / _BIN_DEG).long().clamp(0, _NUM_BINS - 1)
        self.histogram += torch.bincount(bins, minlength=_NUM_BINS)
        return True

    def _compute(self) -> dict[str, torch.Tensor]:
        n = self.num_pixels.double()
        median = histogram_median(self.histogram, _BIN_DEG)
        out = {
            "mean_angular_error": self.sum_image_mean / self.num_images.double(),
            "mean_angular_error_pooled": self.sum_error / n,
            "median_angular_error": torch.tensor(median, dtype=torch.float64),
            "rmse_angular_error": (self.sum_sq_error / n).sqrt(),
        }
        for t, count in zip(THRESHOLDS_DEG, self.num_within):
            out[f"within_{t:g}"] = 100.0 * count.double() / n
        return out
