"""The trivial predictor every trained model must beat: one constant per task (issue "proof it learns").

Depth is a constant map (so least-squares alignment makes it the mean depth of each image), flows are
zero, normals face the camera, albedo and shading are mid-grey (scale alignment picks the best constant),
and semantic segmentation predicts the majority class of the training labels.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from stablemtl.tasks import IGNORE_INDEX, get_task

# Constant value per output channel, in each task's prediction space (see stablemtl.tasks).
CONSTANTS: dict[str, tuple[float, ...]] = {
    "depth": (0.5,),
    "normal": (0.0, 0.0, 1.0),
    "optical_flow": (0.0, 0.0),
    "scene_flow": (0.0, 0.0, 0.0),
    "albedo": (0.5, 0.5, 0.5),
    "shading": (0.5,),
}


class ConstantPredictor:
    """A ``Predictor`` that returns the same value at every pixel of every image.

    Args:
        majority_class: the class id predicted everywhere for ``semantic``.
    """

    def __init__(self, majority_class: int = 0) -> None:
        self.majority_class = int(majority_class)

    @classmethod
    def from_samples(cls, samples: Iterable[Mapping[str, Any]]) -> ConstantPredictor:
        """Take the majority class over the valid semantic labels of ``samples`` (e.g. the training set)."""
        num_classes = get_task("semantic").num_classes
        counts = torch.zeros(num_classes, dtype=torch.long)
        for sample in samples:
            label = sample.get("labels", {}).get("semantic")
            if label is None:
                continue
            ids = label[sample["valid"]["semantic"].unsqueeze(0) & (label != IGNORE_INDEX)]
            counts += torch.bincount(ids.long().flatten(), minlength=num_classes)[:num_classes]
        return cls(int(counts.argmax()))

    def predict(
        self, images: torch.Tensor, next_images: torch.Tensor | None, tasks: Sequence[str]
    ) -> dict[str, torch.Tensor]:
        """``images`` (B,3,H,W) in [0, 1] -> ``{task: (B,C,H,W)}`` constant predictions."""
        batch, _, height, width = images.shape
        out: dict[str, torch.Tensor] = {}
        for task in tasks:
            if task == "semantic":
                out[task] = torch.full((batch, 1, height, width), self.majority_class, dtype=torch.long)
            elif task in CONSTANTS:
                value = torch.tensor(CONSTANTS[task], dtype=torch.float32).view(1, -1, 1, 1)
                out[task] = value.expand(batch, -1, height, width).clone()
            else:
                raise ValueError(f"ConstantPredictor has no constant for task {task!r}")
        return out
