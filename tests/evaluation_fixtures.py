"""Tiny partially labelled samples and reference predictors for the evaluation tests."""

from __future__ import annotations

import torch

from stablemtl.evaluation.trivial import ConstantPredictor  # noqa: F401  (the constant baseline)
from stablemtl.tasks import get_task

ALL_TASKS = ("albedo", "shading", "depth", "normal", "semantic", "optical_flow", "scene_flow")


def make_sample(seed: int, tasks=ALL_TASKS, size=(16, 16), source="synthetic") -> dict:
    """One Sample dict with random labels for ``tasks`` (about 10 % invalid pixels each)."""
    g = torch.Generator().manual_seed(seed)
    h, w = size

    def rand(*shape):
        return torch.rand(*shape, generator=g)

    labels = {}
    for task in tasks:
        if task == "depth":
            labels[task] = 1.0 + 9.0 * rand(1, h, w)
        elif task == "normal":
            n = torch.randn(3, h, w, generator=g)
            n[2] = n[2].abs() + 0.5
            labels[task] = n / n.norm(dim=0, keepdim=True)
        elif task == "semantic":
            labels[task] = torch.randint(0, 8, (1, h, w), generator=g)
        elif task == "optical_flow":
            labels[task] = 5.0 * torch.randn(2, h, w, generator=g)
        elif task == "scene_flow":
            labels[task] = 0.5 * torch.randn(3, h, w, generator=g)
        elif task == "albedo":
            labels[task] = 0.05 + 0.9 * rand(3, h, w)
        elif task == "shading":
            labels[task] = 0.05 + 0.9 * rand(1, h, w)
        else:
            labels[task] = rand(1, h, w)
    valid = {task: rand(h, w) > 0.1 for task in tasks}
    sample = {"image": rand(3, h, w), "source": source, "labels": labels, "valid": valid}
    if any(t in ("optical_flow", "scene_flow") for t in tasks):
        sample["next_image"] = rand(3, h, w)
    return sample


def to_prediction_space(task: str, label: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The ground truth as a perfect model would predict it (docs/architecture.md)."""
    if task == "depth":
        d = label[0][valid]
        return ((label - d.min()) / (d.max() - d.min())).clamp(0, 1)
    if task == "semantic":
        return torch.where(valid, label, torch.zeros_like(label))
    if task in ("optical_flow", "scene_flow"):
        peak = label.permute(1, 2, 0)[valid].abs().amax(dim=0)
        return (label / peak.view(-1, 1, 1)).clamp(-1, 1)
    if task in ("albedo", "shading"):
        return 0.5 * label
    return label.clone()


class OraclePredictor:
    """Returns each sample's ground truth in prediction space (zeros where a task is unlabelled)."""

    def __init__(self, samples) -> None:
        self.samples = list(samples)
        self.calls: list[tuple[int, list[str]]] = []

    def predict(self, images, next_images, tasks):
        self.calls.append((images.shape[0], list(tasks)))
        out = {}
        for task in tasks:
            preds = []
            for image in images:
                sample = next(s for s in self.samples if torch.equal(s["image"], image))
                if task in sample["labels"]:
                    preds.append(to_prediction_space(task, sample["labels"][task], sample["valid"][task]))
                else:
                    facts = get_task(task)
                    shape = (facts.prediction_channels, *image.shape[-2:])
                    preds.append(torch.zeros(shape, dtype=facts.prediction_dtype))
            out[task] = torch.stack(preds)
        return out
