"""The trivial predictor every trained model must beat: one constant per task (issue "proof it learns").

Each task states its constant (``Task.baseline_prediction``): depth is a constant map (so least-squares
alignment makes it the mean depth of each image), flows are zero, normals face the camera, albedo and
shading are mid-grey, and semantic segmentation predicts the majority class of the training labels.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from stablemtl.tasks import check_tasks, get_task, task_names


class ConstantPredictor:
    """A ``Predictor`` that returns the same value at every pixel of every image.

    Args:
        constants: ``{task: value per prediction channel}`` overriding the task's own baseline
            (e.g. ``{"semantic": [2]}``); other tasks use ``Task.baseline_prediction()``.
        tasks: the tasks it predicts (the evaluator skips the others); None: every task asked for.
    """

    def __init__(
        self,
        constants: Mapping[str, Sequence[float] | torch.Tensor] | None = None,
        tasks: Sequence[str] | None = None,
    ) -> None:
        self.constants: dict[str, torch.Tensor] = {}
        for name, value in (constants or {}).items():
            task = get_task(name)
            value = torch.as_tensor(value).to(task.prediction_dtype).flatten()
            if value.numel() != task.prediction_channels:
                raise ValueError(
                    f"constants[{name!r}] has {value.numel()} value(s) for "
                    f"{task.prediction_channels} prediction channel(s)"
                )
            self.constants[name] = value
        if tasks is not None:
            self.tasks = check_tasks(tasks)

    @classmethod
    def from_samples(
        cls, samples: Iterable[Mapping[str, Any]], tasks: Sequence[str] | None = None
    ) -> ConstantPredictor:
        """Fit each task's constant on ``samples`` (e.g. the training set; only the majority semantic class
        depends on them) for ``tasks``, by default the tasks the samples label. With ``tasks`` given, the
        predictor predicts only those."""
        samples = samples if isinstance(samples, Sequence) else list(samples)
        labelled = {name for s in samples for name in s.get("labels", {})}
        names = check_tasks(tasks) if tasks is not None else [n for n in task_names() if n in labelled]
        constants = {}
        for name in names:
            pairs = ((s["labels"][name], s["valid"][name]) for s in samples if name in s.get("labels", {}))
            constants[name] = get_task(name).baseline_prediction(pairs)
        return cls(constants, tasks)

    def predict(
        self, images: torch.Tensor, next_images: torch.Tensor | None, tasks: Sequence[str]
    ) -> dict[str, torch.Tensor]:
        """``images`` (B,3,H,W) in [0, 1] -> ``{task: (B,C,H,W)}`` constant predictions."""
        batch, _, height, width = images.shape
        out: dict[str, torch.Tensor] = {}
        for name in tasks:
            value = self.constants.get(name)
            if value is None:
                value = get_task(name).baseline_prediction()
            out[name] = value.view(1, -1, 1, 1).expand(batch, -1, height, width).clone()
        return out
