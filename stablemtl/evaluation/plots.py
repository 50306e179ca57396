"""PNG figures of a report: prediction grids, Δm bars, per-task metric bars.

Uses matplotlib's object API (``Figure`` + ``savefig``) so nothing touches the global pyplot state or
needs a display.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image

from stablemtl.evaluation.evaluator import VisualSample
from stablemtl.tasks import get_task

_CELL_INCH = 2.2


def ground_truth_image(task_name: str, label: torch.Tensor, valid: torch.Tensor) -> Image.Image:
    """Draw a label as its task draws predictions (``decode(encode(label))``), invalid pixels grey."""
    task = get_task(task_name)
    image3, valid_out = task.encode(label, valid)
    picture = np.asarray(task.visualize(task.decode(image3)).convert("RGB")).copy()
    mask = valid_out.cpu().numpy().astype(bool)
    if mask.shape == picture.shape[:2]:
        picture[~mask] = 128
    return Image.fromarray(picture)


def prediction_grid(visual: VisualSample, path: str | os.PathLike, tasks: Sequence[str] | None = None) -> str:
    """Save one sample's grid: columns input + tasks; rows ground truth, then each model's prediction.

    A cell without a label or prediction says so. ``tasks`` defaults to every task labelled or predicted.
    """
    models = list(visual.predictions)
    if tasks is None:
        tasks = list(visual.labels)
        for preds in visual.predictions.values():
            tasks += [t for t in preds if t not in tasks]
    rows, cols = 1 + len(models), 1 + len(tasks)
    fig = Figure(figsize=(_CELL_INCH * cols, _CELL_INCH * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    axes[0, 0].imshow(visual.image.permute(1, 2, 0).clamp(0, 1).float().cpu().numpy())
    axes[0, 0].set_title(f"input ({visual.source})", fontsize=8)
    for c, task_name in enumerate(tasks, start=1):
        if task_name in visual.labels:
            gt = ground_truth_image(task_name, visual.labels[task_name], visual.valid[task_name])
            axes[0, c].imshow(gt)
            axes[0, c].set_title(f"{task_name}: ground truth", fontsize=8)
        else:
            _note(axes[0, c], f"{task_name}: no label")
        for r, model in enumerate(models, start=1):
            pred = visual.predictions[model].get(task_name)
            if pred is None:
                _note(axes[r, c], f"{model}: not predicted")
                continue
            if get_task(task_name).is_discrete and pred.shape[0] > 1:  # class scores, as metrics accept them
                pred = pred.argmax(dim=0, keepdim=True)
            axes[r, c].imshow(get_task(task_name).visualize(pred.cpu()))
            axes[r, c].set_title(f"{model}", fontsize=8)
    for r, model in enumerate(models, start=1):
        _note(axes[r, 0], model)
    fig.savefig(path, dpi=80)
    return os.fspath(path)


def delta_m_chart(delta: Mapping[str, float | None], path: str | os.PathLike) -> str:
    """Bar chart of Δm (%) per model (models without a value are left out); higher is better."""
    items = [(name, float(v)) for name, v in delta.items() if v is not None and math.isfinite(float(v))]
    if not items:
        raise ValueError("delta has no finite Δm value to plot")
    names, values = zip(*items)
    fig = Figure(figsize=(max(4.5, 1.2 + 0.9 * len(names)), 3.2), layout="constrained")
    ax = fig.subplots()
    colours = ["tab:green" if v >= 0 else "tab:red" for v in values]
    ax.bar(range(len(names)), values, color=colours)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("Δm (%) ↑")
    ax.set_title("Δm vs reference", fontsize=10)
    for i, v in enumerate(values):
        ax.annotate(f"{v:+.2f}", (i, v), ha="center", va="bottom" if v >= 0 else "top", fontsize=7)
    fig.savefig(path, dpi=100)
    return os.fspath(path)


def task_metrics_chart(
    task_name: str, metrics: Mapping[str, Mapping[str, float]], path: str | os.PathLike, max_metrics: int = 8
) -> str:
    """One panel per metric (the primary first, at most ``max_metrics``), one bar per model.

    ``metrics`` is ``{model: {metric: value}}``.
    """
    primary = get_task(task_name).primary_metric
    names: list[str] = []
    for values in metrics.values():
        names += [m for m in values if m not in names]
    names.sort(key=lambda m: m != primary)  # stable: primary first, others in report order
    names = names[:max_metrics]
    models = list(metrics)
    fig = Figure(figsize=(2.4 * len(names), 2.8), layout="constrained")
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    for ax, metric in zip(axes, names):
        values = [metrics[m].get(metric, math.nan) for m in models]
        ax.bar(range(len(models)), [0.0 if math.isnan(v) else v for v in values], color="tab:blue")
        ax.set_xticks(range(len(models)), models, rotation=30, ha="right", fontsize=7)
        ax.set_title(metric + (" (primary)" if metric == primary else ""), fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
    fig.suptitle(task_name, fontsize=9)
    fig.savefig(path, dpi=90)
    return os.fspath(path)


def _note(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=8, transform=ax.transAxes, wrap=True)
