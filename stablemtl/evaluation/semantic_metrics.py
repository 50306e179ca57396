"""Semantic segmentation: one confusion matrix over the data set, then mIoU, pixel accuracy, per-class IoU."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics.functional.classification import multiclass_confusion_matrix

from stablemtl.evaluation.base import DenseMetric
from stablemtl.tasks import IGNORE_INDEX


class SemanticMetrics(DenseMetric):
    """Semantic: ``miou`` and ``pixel_accuracy`` in %, ``iou_<class>`` per class in %.

    Prediction ``(B, 1, h, w)`` int class ids (or ``(B, K, h, w)`` scores, argmax taken), resized by
    nearest neighbour; label ``(B, 1, H, W)`` int64 ids in ``0..K-1`` or ``IGNORE_INDEX``.
    ``IoU_c = TP / (TP + FP + FN)`` over the whole data set; a class that is neither labelled nor
    predicted has no IoU and ``miou`` is the mean over the others (nanmean).

    Args:
        class_names: one name per class id (the task's ``class_names``); spaces become underscores
            in the metric names.
        ignore_index: the label id of unlabelled pixels.
    """

    label_channels = 1
    nearest_resize = True

    def __init__(self, class_names: Sequence[str], ignore_index: int = IGNORE_INDEX, **kw) -> None:
        super().__init__(**kw)
        self.ignore_index = int(ignore_index)
        if len(class_names) < 2:
            raise ValueError(f"class_names needs at least two classes, got {list(class_names)}")
        self.class_names = [str(c).replace(" ", "_") for c in class_names]
        k = len(self.class_names)
        self.add_state("confusion", torch.zeros(k, k, dtype=torch.long), dist_reduce_fx="sum")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def metric_names(self) -> list[str]:
        return ["miou", "pixel_accuracy", *[f"iou_{c}" for c in self.class_names]]

    def config(self) -> dict:
        return {"classes": list(self.class_names), "ignore_index": self.ignore_index}

    def _prepare_prediction(self, prediction: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if prediction.shape[1] > 1:
            prediction = prediction.argmax(dim=1, keepdim=True)
        return super()._prepare_prediction(prediction.long(), size)

    def _update_image(self, prediction: torch.Tensor, label: torch.Tensor, valid: torch.Tensor) -> bool:
        gt = label[0].long()
        valid = valid & (gt != self.ignore_index)
        if not bool(valid.any()):
            return False
        gt, pred = gt[valid], prediction[0][valid]
        k = self.num_classes
        if bool((gt < 0).any() or (gt >= k).any()):
            raise ValueError(f"semantic label ids must lie in 0..{k - 1} or be {self.ignore_index}")
        if bool((pred < 0).any() or (pred >= k).any()):
            raise ValueError(f"prediction ids must lie in 0..{k - 1}, got {pred.min()}..{pred.max()}")
        # Rows: ground truth, columns: prediction.
        self.confusion += multiclass_confusion_matrix(pred, gt, num_classes=k, validate_args=False)
        return True

    def _compute(self) -> dict[str, torch.Tensor]:
        conf = self.confusion.double()
        tp = conf.diag()
        union = conf.sum(0) + conf.sum(1) - tp
        iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
        out = {"miou": 100.0 * iou.nanmean(), "pixel_accuracy": 100.0 * tp.sum() / conf.sum()}
        for name, value in zip(self.class_names, iou):
            out[f"iou_{name}"] = 100.0 * value
        return out
