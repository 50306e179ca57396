"""Between the task registry and the HiTT model: head specs checked against the tasks, labels turned into
targets in each task's decode space, and quantisation centres fitted on training labels.

The model (``stablemtl.models.baselines.hitt``) knows tasks only as names and ``HeadSpec`` config; the
training side owns the task registry, so this is where a label in native units (metres, pixels) becomes
the target HiTT regresses: ``Task.decode(Task.encode(label))``, i.e. exactly what the evaluator receives
from a pipeline (affine-invariant depth in [0, 1], per-axis normalised flows, unit normals, ...).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from stablemtl.models.baselines.hitt import HiTTModel
from stablemtl.models.baselines.hitt_heads import HeadSpec, resolve_heads
from stablemtl.models.baselines.quantization import fit_centres
from stablemtl.tasks import check_tasks, get_task


def head_specs(tasks: Sequence[str], overrides: Mapping[str, Mapping[str, Any]] | None = None) -> list[dict]:
    """Head specs (``[{"name": task, **spec}]``) for ``tasks``, checked against the task registry.

    ``overrides`` changes fields per task (e.g. ``{"depth": {"num_bins": 64, "tau": 0.7}}``). A task
    without a built-in head (a new task) must give a complete spec there. Raises ValueError when the spec
    contradicts the task: class count, prediction channels, or whether it needs the next frame.
    """
    tasks = check_tasks(tasks)
    overrides = dict(overrides or {})
    unknown = [name for name in overrides if name not in tasks]
    if unknown:
        raise ValueError(f"head overrides name tasks {unknown} that are not trained ({tasks})")
    heads = resolve_heads({name: overrides.get(name, {}) for name in tasks})
    for name, spec in heads.items():
        _check_against_task(name, spec)
    return [{"name": name, **spec.to_dict()} for name, spec in heads.items()]


def _check_against_task(name: str, spec: HeadSpec) -> None:
    task = get_task(name)
    classes = getattr(task, "num_classes", None)
    if spec.kind == "classification":
        if classes is None:
            raise ValueError(f"task {name!r} predicts values, not classes; its head must be 'regression'")
        if spec.num_bins != classes:
            raise ValueError(f"task {name!r} has {classes} classes, its head {spec.num_bins}")
        if spec.ignore_index != getattr(task, "ignore_index", spec.ignore_index):
            raise ValueError(f"task {name!r} ignores id {task.ignore_index}, its head {spec.ignore_index}")
    elif spec.channels != task.label_channels:
        raise ValueError(f"task {name!r} predicts {task.label_channels} channel(s), its head {spec.channels}")
    if spec.pair != task.needs_pair:
        raise ValueError(f"task {name!r} needs_pair={task.needs_pair}, its head pair={spec.pair}")


def decode_space_targets(
    task: str, label: torch.Tensor, valid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels ``[B, C, H, W]`` in native units -> ``(target [B, C', H, W], valid [B, H, W])``.

    Class ids stay ids (``[B, 1, H, W]`` int64; ``valid`` loses ignored pixels); every other task goes
    through ``decode(encode(label))``, so the target lives where the model's prediction lives.
    """
    task_obj = get_task(task)
    image3, valid = task_obj.encode(label, valid)
    if getattr(task_obj, "num_classes", None) is not None:
        return label.long(), valid
    return task_obj.decode(image3), valid


@torch.no_grad()
def fit_model_centres(
    model: HiTTModel,
    samples: Iterable[Mapping[str, Any]],
    tasks: Sequence[str] | None = None,
    points_per_task: int = 100_000,
    seed: int = 0,
) -> dict[str, int]:
    """Refine the centres of clustered regression heads ("sphere"/"grid" init) by k-means on labels.

    HiTT paper §A.3 clusters the training normals; the toolkit does the same for every vector-valued
    task (normals, albedo, flows). Scalar bins (depth, shading) stay as configured. ``samples`` are
    un-augmented Sample dicts; at most ``points_per_task`` valid target values per task are drawn with a
    seeded generator. Returns ``{task: points used}`` for the tasks whose centres changed.
    """
    names = [t for t in (tasks or model.task_names) if model.head(t).is_regression]
    names = [t for t in names if model.head(t).init in ("sphere", "grid")]
    generator = torch.Generator().manual_seed(seed)
    pools: dict[str, list[torch.Tensor]] = {t: [] for t in names}
    for sample in samples:
        for task in names:
            if task not in sample["labels"]:
                continue
            target, valid = decode_space_targets(
                task, sample["labels"][task][None], sample["valid"][task][None]
            )
            values = target[0].permute(1, 2, 0)[valid[0]]  # [N,C]
            if len(values) > points_per_task:
                values = values[torch.randperm(len(values), generator=generator)[:points_per_task]]
            pools[task].append(values)
    used = {}
    for task, chunks in pools.items():
        if not chunks:
            continue
        points = torch.cat(chunks)
        if len(points) > points_per_task:
            points = points[torch.randperm(len(points), generator=generator)[:points_per_task]]
        centres = model.task_centres(task)
        if len(points) < len(centres):
            continue
        model.set_centres(task, fit_centres(points, centres.cpu(), unit=model.head(task).unit, seed=seed))
        used[task] = len(points)
    return used
