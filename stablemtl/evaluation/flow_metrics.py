"""Optical-flow and scene-flow metrics, pixel-weighted over the data set.

StableMTL predicts flows normalised per axis to [-1, 1], so by default each image gets a per-axis
non-negative scale fitted to the ground truth on valid pixels (docs/evaluation.md; an oracle scale, so the
report says so). A model that predicts magnitudes is scored with ``alignment="none"``.
"""

from __future__ import annotations

import torch

from stablemtl.evaluation.base import DenseMetric, resize_to_label

FLOW_ALIGNMENTS = ("per_axis_scale", "none")


def per_axis_nonnegative_scale(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-axis scale ``s_a = max(0, <p_a, g_a> / <p_a, p_a>)`` for ``(N, C)`` tensors -> ``(C,)``.

    This is the closed-form non-negative least squares solution of ``min_s ‖s·p_a − g_a‖²`` for each
    axis separately; an all-zero axis gets 0.
    """
    p, g = prediction.double(), target.double()
    pp = (p * p).sum(0)
    pg = (p * g).sum(0)
    return torch.where(pp > 0, pg / pp.clamp(min=1e-300), torch.zeros_like(pp)).clamp(min=0.0)


class _FlowMetrics(DenseMetric):
    def __init__(self, alignment: str = "per_axis_scale", **kw) -> None:
        super().__init__(**kw)
        if alignment not in FLOW_ALIGNMENTS:
            raise ValueError(f"flow alignment {alignment!r} is unknown; choose one of {FLOW_ALIGNMENTS}")
        self.alignment = alignment
        self.add_state("sum_epe", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("num_pixels", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def config(self) -> dict:
        return {"alignment": self.alignment, "pooling": "pixels of the whole data set"}

    def _vectors(self, prediction, label, valid) -> tuple[torch.Tensor, torch.Tensor] | None:
        if not bool(valid.any()):
            return None
        pred = prediction.permute(1, 2, 0)[valid].double()  # [N, C]
        gt = label.permute(1, 2, 0)[valid].double()
        if self.alignment == "per_axis_scale":
            pred = pred * per_axis_nonnegative_scale(pred, gt)
        return pred, gt

    def _endpoint_errors(self, prediction, label, valid) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Accumulate the EPE sum and pixel count of one image; return ``(epe [N], gt [N, C])``."""
        vectors = self._vectors(prediction, label, valid)
        if vectors is None:
            return None
        pred, gt = vectors
        epe = (pred - gt).norm(dim=1)
        self.sum_epe += epe.sum()
        self.num_pixels += epe.numel()
        return epe, gt


class OpticalFlowMetrics(_FlowMetrics):
    """Optical flow: ``epe`` (pixels) and ``fl_all`` (%, pixels with EPE > 3 px and > 5 % of ‖gt‖).

    Prediction ``(B, 2, h, w)``, label ``(B, 2, H, W)`` pixels (u right, v down). With
    ``alignment="none"`` the prediction is taken in pixels of its own grid, so a resize to the label
    grid also rescales u by ``W/w`` and v by ``H/h``.
    """

    label_channels = 2

    def __init__(self, alignment: str = "per_axis_scale", **kw) -> None:
        super().__init__(alignment, **kw)
        self.add_state("num_outliers", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def metric_names(self) -> list[str]:
        return ["epe", "fl_all"]

    def _prepare_prediction(self, prediction: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        h, w = prediction.shape[-2:]
        resized = resize_to_label(prediction, size)
        if self.alignment == "none" and (h, w) != tuple(size):
            factors = torch.tensor([size[1] / w, size[0] / h], dtype=resized.dtype, device=resized.device)
            resized = resized * factors.view(1, 2, 1, 1)
        return resized

    def _update_image(self, prediction: torch.Tensor, label: torch.Tensor, valid: torch.Tensor) -> bool:
        errors = self._endpoint_errors(prediction, label, valid)
        if errors is None:
            return False
        epe, gt = errors
        self.num_outliers += ((epe > 3.0) & (epe > 0.05 * gt.norm(dim=1))).sum()
        return True

    def _compute(self) -> dict[str, torch.Tensor]:
        n = self.num_pixels.double()
        return {"epe": self.sum_epe / n, "fl_all": 100.0 * self.num_outliers.double() / n}


class SceneFlowMetrics(_FlowMetrics):
    """Scene flow: ``epe3d`` (m), ``acc_strict``, ``acc_relax``, ``outliers`` (% of pixels).

    Standard (OR) rules with ``rel = EPE / (‖gt‖ + 1e-4)``: strict EPE < 0.05 or rel < 5 %; relax
    EPE < 0.1 or rel < 10 %; outliers EPE > 0.3 or rel > 10 %. ``official_and=True`` also reports the
    official code's AND rules as ``acc_strict_official_and``, ``acc_relax_official_and`` and
    ``outliers_official_and``. Prediction ``(B, 3, h, w)``, label ``(B, 3, H, W)`` metres.
    """

    label_channels = 3

    def __init__(self, alignment: str = "per_axis_scale", official_and: bool = False, **kw) -> None:
        super().__init__(alignment, **kw)
        self.official_and = bool(official_and)
        # Order: strict, relax, outliers (OR rules), then the same three with AND rules.
        self.add_state("counts", torch.zeros(6, dtype=torch.long), dist_reduce_fx="sum")

    def metric_names(self) -> list[str]:
        names = ["epe3d", "acc_strict", "acc_relax", "outliers"]
        if self.official_and:
            names += ["acc_strict_official_and", "acc_relax_official_and", "outliers_official_and"]
        return names

    def config(self) -> dict:
        rules = "OR (standard)" + (" and official AND" if self.official_and else "")
        return {**super().config(), "accuracy_rules": rules}

    def _update_image(self, prediction: torch.Tensor, label: torch.Tensor, valid: torch.Tensor) -> bool:
        errors = self._endpoint_errors(prediction, label, valid)
        if errors is None:
            return False
        epe, gt = errors
        rel = epe / (gt.norm(dim=1) + 1e-4)
        self.counts += torch.stack(
            [
                ((epe < 0.05) | (rel < 0.05)).sum(),
                ((epe < 0.1) | (rel < 0.1)).sum(),
                ((epe > 0.3) | (rel > 0.1)).sum(),
                ((epe < 0.05) & (rel < 0.05)).sum(),
                ((epe < 0.1) & (rel < 0.1)).sum(),
                ((epe > 0.3) & (rel > 0.1)).sum(),
            ]
        )
        return True

    def _compute(self) -> dict[str, torch.Tensor]:
        n = self.num_pixels.double()
        pct = 100.0 * self.counts.double() / n
        out = {"epe3d": self.sum_epe / n, "acc_strict": pct[0], "acc_relax": pct[1], "outliers": pct[2]}
        if self.official_and:
            names = ("acc_strict_official_and", "acc_relax_official_and", "outliers_official_and")
            out.update(zip(names, pct[3:]))
        return out
