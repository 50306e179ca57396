"""Which metric scores which task: the seven built-in tasks have data-set accumulators; any other
task is scored by averaging its own ``Task.metrics(pred, label, valid)`` over images."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from stablemtl.evaluation.base import check_inputs, nonfinite_images, resize_to_label
from stablemtl.evaluation.config import EvalConfig
from stablemtl.evaluation.depth_metrics import DepthMetrics
from stablemtl.evaluation.flow_metrics import OpticalFlowMetrics, SceneFlowMetrics
from stablemtl.evaluation.intrinsic_metrics import IntrinsicImageMetrics
from stablemtl.evaluation.normal_metrics import NormalMetrics
from stablemtl.evaluation.semantic_metrics import SemanticMetrics
from stablemtl.tasks import Task, get_task


class TaskMetricsAverager:
    """Scores a task without a built-in accumulator: the mean over images of ``task.metrics``.

    ``update(prediction (B, C, h, w), label (B, C, H, W), valid (B, H, W))``; predictions are resized
    to the label (nearest for integer dtypes, bilinear otherwise). NaN metric values are skipped per
    metric; a non-finite prediction is counted in ``num_nonfinite`` and makes every result NaN (as in
    ``DenseMetric``).
    """

    def __init__(self, task: Task) -> None:
        self.task = task
        self.num_images = 0
        self.num_nonfinite = 0
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    def update(self, prediction: torch.Tensor, label: torch.Tensor, valid: torch.Tensor) -> None:
        prediction, label, valid = check_inputs(prediction, label, valid, None)
        nonfinite = nonfinite_images(prediction, valid)
        nearest = not prediction.is_floating_point()
        prediction = resize_to_label(prediction, tuple(label.shape[-2:]), nearest=nearest)
        for pred_i, label_i, valid_i, bad in zip(prediction, label, valid, nonfinite):
            if not bool(valid_i.any()):
                continue
            if bad:
                self.num_nonfinite += 1
                self.num_images += 1
                continue
            for name, value in self.task.metrics(pred_i, label_i, valid_i).items():
                if not math.isnan(float(value)):
                    self._sums[name] = self._sums.get(name, 0.0) + float(value)
                    self._counts[name] = self._counts.get(name, 0) + 1
            self.num_images += 1

    def results(self) -> dict[str, float]:
        """Mean of each metric over the images where it was defined (all NaN after a non-finite
        prediction)."""
        if self.num_nonfinite:
            return {name: math.nan for name in {self.task.primary_metric, *self._sums}}
        return {name: self._sums[name] / self._counts[name] for name in self._sums}

    def config(self) -> dict:
        return {"scoring": f"mean over images of {type(self.task).__name__}.metrics"}


def _semantic(config: EvalConfig) -> SemanticMetrics:
    task = get_task("semantic")
    return SemanticMetrics(class_names=getattr(task, "class_names", None) or ())


_BUILTIN: dict[str, Callable[[EvalConfig], object]] = {
    "depth": lambda c: DepthMetrics(c.depth_alignment, c.min_depth, c.max_depth),
    "normal": lambda c: NormalMetrics(),
    "semantic": _semantic,
    "optical_flow": lambda c: OpticalFlowMetrics(c.flow_alignment),
    "scene_flow": lambda c: SceneFlowMetrics(c.scene_flow_alignment, c.scene_flow_official_and),
    "albedo": lambda c: IntrinsicImageMetrics(channels=3),
    "shading": lambda c: IntrinsicImageMetrics(channels=1),
}


def build_metric(task_name: str, config: EvalConfig | None = None):
    """A fresh accumulator for ``task_name`` with ``update``, ``results``, ``config`` and ``num_images``.

    Unknown task names raise ``ValueError`` (from the task registry).
    """
    task = get_task(task_name)
    config = config or EvalConfig()
    if task_name in _BUILTIN:
        return _BUILTIN[task_name](config)
    return TaskMetricsAverager(task)
