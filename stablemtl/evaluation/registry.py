"""Which metric scores which task: a task names its accumulator family in ``Task.metric_family`` and this
module builds it from the family's factory; a task naming none is scored by averaging its own
``Task.metrics(pred, label, valid)`` over images.

Tasks name their scoring and evaluation implements it, because ``stablemtl.tasks`` imports nothing of the
toolkit: the accumulators (torchmetrics, scikit-image) and ``EvalConfig`` stay here, and a new task that
is scored like depth says ``metric_family = "depth"`` without touching this package.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

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
        nearest = self.task.is_discrete or not prediction.is_floating_point()
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


MetricFactory = Callable[[Task, EvalConfig], Any]

# How each family turns the task's facts and the evaluation settings into a fresh accumulator.
_FAMILIES: dict[str, MetricFactory] = {
    "depth": lambda task, c: DepthMetrics(c.depth_alignment, c.min_depth, c.max_depth),
    "normal": lambda task, c: NormalMetrics(),
    "semantic": lambda task, c: SemanticMetrics(task.class_names, ignore_index=task.ignore_index),
    "optical_flow": lambda task, c: OpticalFlowMetrics(c.flow_alignment),
    "scene_flow": lambda task, c: SceneFlowMetrics(c.scene_flow_alignment, c.scene_flow_official_and),
    "intrinsic_image": lambda task, c: IntrinsicImageMetrics(channels=task.label_channels),
}


def register_metric_family(name: str, factory: MetricFactory) -> None:
    """Add an accumulator family that tasks can name in ``metric_family``; ``factory(task, config)``
    returns an object with ``update``, ``results``, ``config`` and ``num_images``."""
    if name in _FAMILIES:
        raise ValueError(f"metric family {name!r} is already registered")
    _FAMILIES[name] = factory


def metric_families() -> list[str]:
    """Names of the registered accumulator families."""
    return list(_FAMILIES)


def build_metric(task_name: str, config: EvalConfig | None = None):
    """A fresh accumulator for ``task_name`` with ``update``, ``results``, ``config`` and ``num_images``.

    Unknown task names raise ``ValueError`` (from the task registry), as does an unknown family.
    """
    task = get_task(task_name)
    config = config or EvalConfig()
    if task.metric_family is None:
        return TaskMetricsAverager(task)
    factory = _FAMILIES.get(task.metric_family)
    if factory is None:
        raise ValueError(
            f"task {task_name!r} names metric family {task.metric_family!r}; known: {', '.join(_FAMILIES)}"
        )
    return factory(task, config)
