"""Depth metrics after per-image least-squares scale-and-shift alignment (docs/evaluation.md).

Each image: fit ``s·pred + t ≈ gt`` on valid pixels (or ``≈ 1/gt`` in disparity space), clip the
aligned depth to ``[min_depth, max_depth]``, compute the errors below on valid pixels, and average
each error over images. Before inversion (``i_rmse``) the depth is clipped to the range of the image's
valid ground truth: an aligned depth near zero would otherwise dominate the metric with its inverse.
"""

from __future__ import annotations

import math

import torch

from stablemtl.evaluation.base import DenseMetric

DEPTH_ALIGNMENTS = ("least_squares", "least_squares_disparity", "none")
_NAMES = ("abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "delta1", "delta2", "delta3", "silog", "i_rmse")


def fit_scale_shift(prediction: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    """Least-squares ``(s, t)`` minimising ``Σ (s·x + t − y)²`` for 1-D tensors ``x, y`` (closed form).

    A constant prediction gets ``s = 0`` and ``t = mean(y)``.
    """
    x, y = prediction.double(), target.double()
    n = x.numel()
    if n == 0:
        raise ValueError("fit_scale_shift needs at least one valid pixel")
    mx, my = x.mean(), y.mean()
    var = ((x - mx) ** 2).sum()
    if float(var) <= 1e-24:
        return 0.0, float(my)
    scale = ((x - mx) * (y - my)).sum() / var
    return float(scale), float(my - scale * mx)


def depth_errors(
    pred: torch.Tensor, gt: torch.Tensor, inverse_range: tuple[float, float] | None = None
) -> dict[str, float]:
    """Standard depth errors of positive 1-D ``pred`` against positive ``gt`` (metres).

    δk is a fraction in [0, 1]; ``silog = 100·sqrt(mean(e²) − mean(e)²)`` with ``e = ln p − ln g``.
    ``i_rmse`` inverts ``pred`` clipped to ``inverse_range = (low, high)`` when given (the valid depth
    range), so that one near-zero aligned depth cannot blow the inverse up.
    """
    pred, gt = pred.double(), gt.double()
    inverse = 1.0 / (pred if inverse_range is None else pred.clamp(*inverse_range))
    diff = pred - gt
    log_diff = pred.log() - gt.log()
    ratio = torch.maximum(pred / gt, gt / pred)
    silog_var = (log_diff**2).mean() - log_diff.mean() ** 2
    return {
        "abs_rel": float((diff.abs() / gt).mean()),
        "sq_rel": float((diff**2 / gt).mean()),
        "rmse": float((diff**2).mean().sqrt()),
        "rmse_log": float((log_diff**2).mean().sqrt()),
        "log10": float((pred.log10() - gt.log10()).abs().mean()),
        "delta1": float((ratio < 1.25).double().mean()),
        "delta2": float((ratio < 1.25**2).double().mean()),
        "delta3": float((ratio < 1.25**3).double().mean()),
        "silog": 100.0 * math.sqrt(max(float(silog_var), 0.0)),
        "i_rmse": float(((inverse - 1.0 / gt) ** 2).mean().sqrt()),
    }


class DepthMetrics(DenseMetric):
    """Depth: alignment per image, then AbsRel, SqRel, RMSE, RMSE-log, log10, δ1-3, SILog, iRMSE.

    Args:
        alignment: ``"least_squares"`` (scale and shift in depth space, the official protocol),
            ``"least_squares_disparity"`` (fit to ``1/gt``, then invert) or ``"none"`` (metric depth).
        min_depth, max_depth: ground truth outside the range is invalid; the aligned prediction is
            clipped to it (``max_depth=None``: no upper bound).
    Prediction ``(B, 1, h, w)``, label ``(B, 1, H, W)`` metres; the values are averaged over images.
    """

    label_channels = 1

    def __init__(
        self, alignment: str = "least_squares", min_depth: float = 1e-3, max_depth: float | None = None, **kw
    ) -> None:
        super().__init__(**kw)
        if alignment not in DEPTH_ALIGNMENTS:
            raise ValueError(f"depth alignment {alignment!r} is unknown; choose one of {DEPTH_ALIGNMENTS}")
        if min_depth <= 0 or (max_depth is not None and max_depth <= min_depth):
            raise ValueError(f"need 0 < min_depth < max_depth, got {min_depth=}, {max_depth=}")
        self.alignment, self.min_depth, self.max_depth = alignment, float(min_depth), max_depth
        for name in _NAMES:
            self.add_state(f"sum_{name}", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def metric_names(self) -> list[str]:
        return list(_NAMES)

    def config(self) -> dict:
        return {"alignment": self.alignment, "min_depth": self.min_depth, "max_depth": self.max_depth}

    def _update_image(self, prediction: torch.Tensor, label: torch.Tensor, valid: torch.Tensor) -> bool:
        gt = label[0].double()
        valid = valid & (gt >= self.min_depth)
        if self.max_depth is not None:
            valid = valid & (gt <= self.max_depth)
        if not bool(valid.any()):
            return False
        pred = self._align(prediction[0].double()[valid], gt[valid])
        upper = math.inf if self.max_depth is None else self.max_depth
        pred = pred.clamp(min=self.min_depth, max=upper)
        # Inverse depth is taken of the prediction clipped to the image's valid ground-truth range.
        inverse_range = (float(gt[valid].min()), float(gt[valid].max()))
        for name, value in depth_errors(pred, gt[valid], inverse_range).items():
            state = getattr(self, f"sum_{name}")
            setattr(self, f"sum_{name}", state + value)
        return True

    def _align(self, pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        if self.alignment == "none":
            return pred
        if self.alignment == "least_squares":
            scale, shift = fit_scale_shift(pred, gt)
            return scale * pred + shift
        scale, shift = fit_scale_shift(pred, 1.0 / gt)
        # Disparity below 1/max_depth would mean a depth beyond the range (or negative): clip first.
        min_disp = 1.0 / self.max_depth if self.max_depth is not None else 1e-6
        return 1.0 / (scale * pred + shift).clamp(min=min_disp)

    def _compute(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, f"sum_{name}") / self.num_images for name in _NAMES}
