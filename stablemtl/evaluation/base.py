"""The shared base of the per-task metrics: resize the prediction to the label, check shapes, count images.

Every metric is a torchmetrics ``Metric`` whose states are sums (``dist_reduce_fx="sum"``), so several
processes can score shards of a data set and ``compute`` returns the data-set value after the sync.

Non-finite predictions are refused, never scored: an image whose prediction holds NaN or inf at a
valid pixel (anywhere, when the prediction must be resized) is counted in ``num_nonfinite``, and a
metric that saw any such image returns NaN for every value. Replacing them by numbers would score a
broken model as a plausible one (e.g. ``nan_to_num`` giving a NaN albedo a mid-range si-RMSE).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torchmetrics import Metric


def resize_to_label(prediction: torch.Tensor, size: tuple[int, int], nearest: bool = False) -> torch.Tensor:
    """Resize a ``(B, C, h, w)`` prediction to the label size ``(H, W)``; labels are never resized.

    Continuous outputs use bilinear interpolation (``align_corners=False``), class ids nearest
    neighbour; the dtype is kept.
    """
    if tuple(prediction.shape[-2:]) == tuple(size):
        return prediction
    if nearest:
        out = F.interpolate(prediction.double(), size=size, mode="nearest")
        return out.round().to(prediction.dtype)
    out = F.interpolate(prediction.double(), size=size, mode="bilinear", align_corners=False)
    return out.to(prediction.dtype)


def check_inputs(
    prediction: torch.Tensor, label: torch.Tensor, valid: torch.Tensor, channels: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batch unbatched inputs and check shapes: returns ``(pred[B,C,h,w], label[B,C,H,W], valid[B,H,W])``.

    Non-finite label values are removed from ``valid``.
    """
    if prediction.dim() == 3:
        prediction = prediction.unsqueeze(0)
    if label.dim() == 3:
        label = label.unsqueeze(0)
    if valid.dim() == 2:
        valid = valid.unsqueeze(0)
    if prediction.dim() != 4 or label.dim() != 4 or valid.dim() != 3:
        raise ValueError(
            "prediction and label must be (B, C, H, W) and valid (B, H, W); got "
            f"{tuple(prediction.shape)}, {tuple(label.shape)}, {tuple(valid.shape)}"
        )
    if prediction.shape[0] != label.shape[0]:
        raise ValueError(f"prediction batch {prediction.shape[0]} differs from label batch {label.shape[0]}")
    if channels is not None and label.shape[1] != channels:
        raise ValueError(f"label must have {channels} channel(s), got shape {tuple(label.shape)}")
    if valid.shape != (label.shape[0], *label.shape[-2:]):
        raise ValueError(f"valid mask shape {tuple(valid.shape)} does not match label {tuple(label.shape)}")
    valid = valid.bool()
    if label.is_floating_point():
        valid = valid & torch.isfinite(label).all(dim=1)
    return prediction, label, valid


def nonfinite_images(prediction: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``(B,)`` bool: images of a ``(B, C, h, w)`` prediction with NaN/inf at a valid pixel of ``(B, H, W)``.

    When the prediction is not at the label size every pixel counts (a resize spreads NaN anyway).
    """
    if not prediction.is_floating_point():
        return torch.zeros(prediction.shape[0], dtype=torch.bool)
    bad = ~torch.isfinite(prediction).all(dim=1)  # [B,h,w]
    if bad.shape == valid.shape:
        bad = bad & valid
    return bad.flatten(1).any(dim=1)


class DenseMetric(Metric):
    """Base class: ``update(prediction, label, valid)`` scores each image with at least one valid pixel.

    Args of ``update``: ``prediction`` ``(B, C, h, w)`` in the task's prediction space (any size: it
    is resized to the label; non-finite values are refused, see the module docstring), ``label``
    ``(B, C, H, W)`` native units, ``valid`` ``(B, H, W)`` bool.
    Subclasses implement ``_update_image(pred[C,H,W], label[C,H,W], valid[H,W]) -> bool`` (False when
    the image has nothing to score) and ``_compute() -> dict``.
    """

    full_state_update: ClassVar[bool] = False
    # Channels the label must have (None: any); whether predictions are resized nearest (class ids).
    label_channels: ClassVar[int | None] = None
    nearest_resize: ClassVar[bool] = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("num_images", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("num_nonfinite", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, prediction: torch.Tensor, label: torch.Tensor, valid: torch.Tensor) -> None:
        prediction, label, valid = check_inputs(prediction, label, valid, self.label_channels)
        nonfinite = nonfinite_images(prediction, valid)
        prediction = self._prepare_prediction(prediction, tuple(label.shape[-2:]))
        for pred_i, label_i, valid_i, bad in zip(prediction, label, valid, nonfinite):
            if bad and bool(valid_i.any()):  # counted as scored: the task shows in the report, with NaN
                self.num_nonfinite += 1
                self.num_images += 1
            elif self._update_image(pred_i, label_i, valid_i):
                self.num_images += 1

    def compute(self) -> dict[str, torch.Tensor]:
        if int(self.num_images) == 0 or int(self.num_nonfinite) > 0:
            return {name: torch.tensor(math.nan) for name in self.metric_names()}
        return self._compute()

    def results(self) -> dict[str, float]:
        """``compute()`` as plain floats (NaN where a value is undefined or a prediction was non-finite)."""
        return {name: float(value) for name, value in self.compute().items()}

    def config(self) -> dict:
        """The settings that change the numbers (written into every report)."""
        return {}

    def metric_names(self) -> list[str]:
        """Names of the values ``compute`` returns."""
        raise NotImplementedError

    # ----------------------------------------------------------------------------------------------
    def _prepare_prediction(self, prediction: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return resize_to_label(prediction, size, nearest=self.nearest_resize)

    def _update_image(self, prediction: torch.Tensor, label: torch.Tensor, valid: torch.Tensor) -> bool:
        raise NotImplementedError

    def _compute(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError
