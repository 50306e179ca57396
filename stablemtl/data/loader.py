"""Read a source written by ``make_dataset`` (or any table with the same columns) as torch Samples."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np
import torch
from datasets import load_from_disk
from torch.utils.data import Dataset as TorchDataset

from stablemtl.data.augment import Augmentation, augment_sample
from stablemtl.data.manifest import verify_data_files
from stablemtl.data.profiles import get_profile, profile_names
from stablemtl.data.storage import LABEL_PREFIX, VALID_PREFIX, row_to_sample
from stablemtl.tasks import check_tasks, get_task, task_names


class SourceDataset(TorchDataset):
    """A torch ``Dataset`` of Sample dicts from one source folder.

    Attributes: ``source`` (profile name), ``tasks`` (labelled tasks, in registry order), ``path``,
    ``augmentation`` (None when ``augment=False``) and ``task_augmentation`` (per-task overrides used
    by ``item(index, task)``). Augmentation is a pure function of ``(seed, epoch, index)``: call
    ``set_epoch`` each epoch for fresh draws.
    """

    def __init__(self, table, path: str, augmentation: Augmentation | None, seed: int, tasks=None):
        if getattr(table, "_indices", None) is not None:
            table = table.flatten_indices()
        # The numpy formatter turns a null array cell into an array; remember where the nulls are.
        self._nulls = {
            name: np.asarray(column.is_null())
            for name, column in zip(table.column_names, table.data.columns)
            if name.startswith((LABEL_PREFIX, VALID_PREFIX)) and column.null_count > 0
        }
        self._table = table.with_format("numpy")
        self.path = path
        sources = sorted(set(table.unique("source")))
        if len(sources) != 1:
            raise ValueError(f"{path}: a source folder must hold one source, found {sources}")
        self.source = sources[0]
        labelled = [t for t in task_names() if LABEL_PREFIX + t in table.column_names]
        if tasks is not None:
            tasks = check_tasks(tasks)
            missing = [t for t in tasks if t not in labelled]
            if missing:
                raise ValueError(f"{path} does not label tasks {missing}; it labels {labelled}")
            labelled = tasks
        self.tasks = labelled
        self.augmentation = augmentation
        self.task_augmentation: dict[str, Augmentation] = {}
        self.seed = int(seed)
        self.epoch = 0
        self._task_column = None

    def __len__(self) -> int:
        return len(self._table)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def rows_with_task(self, task: str) -> list[int]:
        """Indices of the rows that label ``task``."""
        get_task(task)
        if self._task_column is None:
            self._task_column = [set(t) for t in self._table.with_format(None)["tasks"]]
        return [i for i, names in enumerate(self._task_column) if task in names]

    def raw(self, index: int) -> dict:
        """Row ``index`` as a Sample without augmentation (only the dataset's ``tasks`` kept)."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"row {index} is out of range for {len(self)} rows of {self.path}")
        where = f"row {index} of {self.path}"
        try:
            row = self._table[int(index)]
        except Exception as err:  # damaged Arrow data or an image that does not decode
            raise ValueError(f"{where} cannot be read ({type(err).__name__}: {err})") from err
        for name, nulls in self._nulls.items():
            if nulls[index]:
                row[name] = None
        sample = row_to_sample(row, where)
        for task in list(sample["labels"]):
            if task not in self.tasks:
                del sample["labels"][task], sample["valid"][task]
        return sample

    def __getitem__(self, index: int) -> dict:
        return self.item(index)

    def item(self, index: int, task: str | None = None) -> dict:
        """Row ``index`` augmented as a training sample of ``task`` (its ``task_augmentation`` entry, else
        ``augmentation``); ``item(i)`` is ``self[i]``. Unaugmented when ``augmentation`` is None."""
        sample = self.raw(index)
        if self.augmentation is None:
            return sample
        if task is not None:
            get_task(task)
        augmentation = self.task_augmentation.get(task, self.augmentation) if task else self.augmentation
        generator = torch.Generator().manual_seed(
            zlib.crc32(f"{self.seed}/{self.epoch}/{int(index)}/{self.source}".encode())
        )
        return augment_sample(sample, augmentation, generator)


def load_source(
    path: str | os.PathLike,
    augment: bool = False,
    seed: int = 0,
    tasks=None,
    augmentation: Augmentation | None = None,
) -> SourceDataset:
    """Open the source folder ``path`` (written by ``make_dataset`` / ``stablemtl-make-data``).

    ``augment=True`` uses the augmentation of the source's profile, per task (spec §3.2; h-flip only for
    a source that is not a registered profile) unless ``augmentation`` is given, which then applies to
    every task. ``tasks`` restricts the labels. The Arrow files are checked against the checksums in
    ``make_data.json`` first (a mismatch or a missing file raises ``ValueError`` naming it; a folder
    without checksums is loaded with a one-time warning).
    """
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"source path {str(path)!r} is not a folder")
    if not (path / "state.json").exists():
        partial = (
            " (an unfinished make_dataset run: rerun it to resume)" if (path / "shards").exists() else ""
        )
        raise ValueError(f"{path} is not a saved data set: state.json is missing{partial}")
    # Before Arrow memory-maps the files: damaged bytes can crash it or change rows without an error.
    verify_data_files(path)
    try:
        table = load_from_disk(str(path))
    except Exception as err:
        raise ValueError(f"{path} cannot be loaded as a data set ({type(err).__name__}: {err})") from err
    for column in ("image", "source", "tasks"):
        if column not in table.column_names:
            raise ValueError(f"{path}: column {column!r} is missing; columns: {table.column_names}")
    dataset = SourceDataset(table, str(path), None, seed, tasks)
    if augment:
        if augmentation is None and dataset.source in profile_names():
            profile = get_profile(dataset.source)
            augmentation = profile.augmentation
            dataset.task_augmentation = dict(profile.task_augmentation)
        dataset.augmentation = augmentation or Augmentation()
    return dataset


def collate_task_batch(samples: list[dict], task: str) -> dict:
    """Stack the ``task`` part of ``samples`` into one single-task batch.

    Returns ``{"image": (B,3,H,W), "next_image": (B,3,H,W) or None, "label": (B,C,H,W), "valid": (B,H,W)
    bool, "source": [str] * B, "task": task}``; ``next_image`` is stacked when the task needs a pair.
    """
    task_obj = get_task(task)
    if not samples:
        raise ValueError("collate_task_batch needs at least one sample")
    for i, s in enumerate(samples):
        if task not in s.get("labels", {}):
            raise ValueError(f"sample {i} (source {s.get('source')!r}) has no {task!r} label")
        if task_obj.needs_pair and s.get("next_image") is None:
            raise ValueError(f"sample {i} has no next_image, which task {task!r} needs")
        if s["image"].shape != samples[0]["image"].shape:
            raise ValueError(
                f"sample {i} is {tuple(s['image'].shape)}, sample 0 {tuple(samples[0]['image'].shape)}"
            )
    return {
        "image": torch.stack([s["image"] for s in samples]),
        "next_image": torch.stack([s["next_image"] for s in samples]) if task_obj.needs_pair else None,
        "label": torch.stack([s["labels"][task] for s in samples]),
        "valid": torch.stack([s["valid"][task] for s in samples]),
        "source": [s["source"] for s in samples],
        "task": task,
    }
