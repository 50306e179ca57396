"""Validation during training: each task's loss and a PNG grid of predictions, for any objective.

Each row of the grid is one task; each image contributes three tiles: the input frame, the label and
the prediction, both drawn by ``Task.visualize`` (the label after the ``encode``/``decode`` round trip,
so that it is in the prediction's space, e.g. affine-normalised depth).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers.utils import make_image_grid
from PIL import Image
from torch.utils.data import Dataset

from stablemtl.data import collate_task_batch, load_source
from stablemtl.tasks import get_task
from stablemtl.tasks.base import to_pil_rgb
from stablemtl.training.config import TrainConfig
from stablemtl.training.data import held_out_rows
from stablemtl.training.objectives.base import Objective
from stablemtl.utils.atomic import atomic_path

logger = logging.getLogger(__name__)


def validation_groups(
    datasets: Sequence[Dataset],
    tasks: Sequence[str],
    num_images: int,
    rows: Sequence[Sequence[int]] | None = None,
) -> list[dict]:
    """One collated group per task: the first ``num_images`` samples labelling it of the first source
    that has any, among that source's ``rows`` (per dataset; default: all of its rows)."""
    groups = []
    for task in tasks:
        samples = []
        for i, source in enumerate(datasets):
            if task not in source.tasks:
                continue
            candidates = range(len(source)) if rows is None else rows[i]
            if hasattr(source, "rows_with_task"):
                labelled = set(source.rows_with_task(task))
                candidates = [r for r in candidates if r in labelled]
            samples = [source[r] for r in list(candidates)[:num_images]]
            if samples:
                break
        if not samples:
            logger.warning("no validation source labels %s: it is left out of validation", task)
            continue
        groups.append(collate_task_batch(samples, task))
    return groups


@dataclass
class ValidationSet:
    """The validation groups and where they come from (``origin``, said in the log)."""

    groups: list[dict]
    origin: str

    @classmethod
    def build(cls, config: TrainConfig, tasks: Sequence[str]) -> ValidationSet:
        """``validation_data`` unaugmented, else the rows held out at the end of each training folder
        (``held_out_rows``: the training sampler never draws them)."""
        folders = config.validation_data or config.train_data
        sources = [load_source(path, augment=False, seed=config.seed) for path in folders]
        if config.validation_data:
            return cls(
                validation_groups(sources, tasks, config.num_validation_images), "held-out validation_data"
            )
        held_out = [held_out_rows(config, len(s)) for s in sources]
        tails = [range(len(s) - n, len(s)) for s, n in zip(sources, held_out)]
        origin = f"the last {'/'.join(map(str, held_out))} rows of the training sources, held out of training"
        return cls(validation_groups(sources, tasks, config.num_validation_images, tails), origin)

    def __bool__(self) -> bool:
        return bool(self.groups)

    @staticmethod
    def save_grid(grid: Image.Image, output_dir: str | Path, step: int) -> Path:
        """Write ``validation/step-<step>.png`` under ``output_dir`` atomically; return its path."""
        path = Path(output_dir) / "validation" / f"step-{step:07d}.png"
        with atomic_path(path) as tmp:
            grid.save(tmp, format="PNG")
        return path


@torch.no_grad()
def run_validation(
    objective: Objective, modules: Mapping[str, torch.nn.Module], validation: ValidationSet
) -> tuple[dict[str, float], Image.Image]:
    """Score and predict every validation group; return ``({task: loss}, grid image)``."""
    losses, tiles = {}, []
    for group in validation.groups:
        task = get_task(group["task"])
        losses[task.name] = float(objective.loss(modules, [group]))
        predicted = objective.predict(modules, group["image"], group.get("next_image"), [task.name])
        label_image, _ = task.encode(group["label"], group["valid"])
        label = task.decode(label_image)
        row = []
        for i in range(label.shape[0]):
            truth, guess = label[i].cpu(), predicted[task.name][i].float().cpu()
            row += [
                to_pil_rgb(group["image"][i].permute(1, 2, 0)),
                task.visualize(truth),
                task.visualize(guess),
            ]
        tiles.append(row)
    cols = max(len(row) for row in tiles)
    size = tiles[0][0].size
    flat = []
    for row in tiles:
        row = [t.convert("RGB").resize(size, Image.NEAREST) for t in row]
        flat += row + [Image.new("RGB", size)] * (cols - len(row))
    return losses, make_image_grid(flat, rows=len(tiles), cols=cols)
