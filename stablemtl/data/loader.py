"""Open a source as torch Samples: a ``make_dataset`` folder, any ``datasets`` table with the same columns
(local or Hub), a plain folder, or a real data set through its reader (``stablemtl.data.readers``)."""

from __future__ import annotations

import logging
import os
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from datasets import load_from_disk
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import IterableDataset as TorchIterableDataset

from stablemtl.data.augment import Augmentation, augment_sample
from stablemtl.data.manifest import verify_data_files
from stablemtl.data.profiles import get_profile, profile_names
from stablemtl.data.sample_copy import copy_sample, sample_bytes
from stablemtl.data.storage import LABEL_PREFIX, VALID_PREFIX, row_to_sample
from stablemtl.tasks import check_tasks, get_task, task_names
from stablemtl.utils.memo import ByteBudgetMemo

logger = logging.getLogger(__name__)


def reader_names() -> list[str]:
    from stablemtl.data.readers import reader_names as names

    return names()


class SourceDataset(TorchDataset):
    """A torch ``Dataset`` of Sample dicts from one source folder.

    Attributes: ``source`` (profile name), ``tasks`` (labelled tasks, in registry order), ``path``,
    ``augmentation`` (None when ``augment=False``) and ``task_augmentation`` (per-task overrides used
    by ``item(index, task)``). Augmentation is a pure function of ``(seed, epoch, index)``: call
    ``set_epoch`` each epoch for fresh draws. Set ``row_memo`` (a
    :class:`~stablemtl.utils.memo.ByteBudgetMemo`, may be shared by several sources) to keep decoded rows
    in memory: decoding a row costs milliseconds, far more than copying it.
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
        self._task_tables: dict[str, Any] = {}
        self.row_memo: ByteBudgetMemo | None = None

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

    def raw(self, index: int, task: str | None = None) -> dict:
        """Row ``index`` as a Sample without augmentation (only the dataset's ``tasks`` kept; with ``task``,
        only that task's label, and only its columns are read and decoded). With a ``row_memo``, a row
        read before is served from it: a copy, so the caller may change it."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"row {index} is out of range for {len(self)} rows of {self.path}")
        if self.row_memo is None:
            return self._decode(index, task)
        key = (self.path, int(index) % len(self), task)
        sample = self.row_memo.get(key)
        if sample is None:
            sample = self._decode(index, task)
            if not self.row_memo.put(key, sample, sample_bytes(sample)):
                return sample  # not kept: no one else holds it
        return copy_sample(sample)

    def _decode(self, index: int, task: str | None) -> dict:
        where = f"row {index} of {self.path}"
        table = self._table if task is None else self._task_table(task)
        try:
            row = table[int(index)]
        except Exception as err:  # damaged Arrow data or an image that does not decode
            raise ValueError(f"{where} cannot be read ({type(err).__name__}: {err})") from err
        for name, nulls in self._nulls.items():
            if name in row and nulls[index]:
                row[name] = None
        if task is not None:
            row["tasks"] = [t for t in row["tasks"] if str(t) == task]
        sample = row_to_sample(row, where)
        for task in list(sample["labels"]):
            if task not in self.tasks:
                del sample["labels"][task], sample["valid"][task]
        return sample

    def _task_table(self, task: str):
        """The table without the other tasks' label and valid columns (a training item reads one task)."""
        get_task(task)
        view = self._task_tables.get(task)
        if view is None:
            own = {LABEL_PREFIX + task, VALID_PREFIX + task}
            columns = [c for c in self._table.column_names if not c.startswith((LABEL_PREFIX, VALID_PREFIX))]
            columns += [c for c in self._table.column_names if c in own]
            view = self._task_tables[task] = self._table.select_columns(columns).with_format("numpy")
        return view

    def __getitem__(self, index: int) -> dict:
        return self.item(index)

    def item(self, index: int, task: str | None = None) -> dict:
        """Row ``index`` augmented as a training sample of ``task`` (only that task's label, its
        ``task_augmentation`` entry, else ``augmentation``); ``item(i)`` is ``self[i]`` (every label).
        Unaugmented when ``augmentation`` is None."""
        sample = self.raw(index, task)
        if self.augmentation is None:
            return sample
        if task is not None:
            get_task(task)
        augmentation = self.task_augmentation.get(task, self.augmentation) if task else self.augmentation
        generator = torch.Generator().manual_seed(
            zlib.crc32(f"{self.seed}/{self.epoch}/{int(index)}/{self.source}".encode())
        )
        return augment_sample(sample, augmentation, generator)


SourceSpec = str | os.PathLike | Mapping[str, Any]
_SPEC_KEYS = {"reader", "hub", "path"}


def load_source(
    spec: SourceSpec,
    augment: bool = False,
    seed: int = 0,
    tasks=None,
    augmentation: Augmentation | None = None,
):
    """Open one training or evaluation source; returns a torch ``Dataset`` of Sample dicts.

    ``spec`` is one of:

    - a folder written by ``make_dataset`` / ``stablemtl-make-data`` (a saved ``datasets`` table);
    - a plain folder (``images/`` plus per-task label folders, see docs/data.md);
    - ``"reader:root"``, e.g. ``"hypersim:data/hypersim/train"``: a reader with its defaults (every
      complete frame under root, the official resolution); ``"hub:user/name"``: a ``datasets`` data set;
    - a ``.yaml`` file holding one mapping as below (the files of ``configs/data/``);
    - a mapping: ``{"reader": "vkitti2", "root": ..., "split": ..., "resolution": [H, W], "tasks": [...],
      "source": ..., "augmentation": {...}, <reader options>}``, ``{"hub": "user/name" or a local data
      folder, "split": "train", "revision": ..., "streaming": false}`` or ``{"path": folder}``.

    ``augment=True`` uses the source's own training augmentation per task (its profile's, or its
    reader's recipe) unless ``augmentation`` (or the mapping's ``augmentation``) is given, which then
    applies to every task. ``tasks`` restricts the labels. ``streaming`` Hub sources are iterable
    datasets (for evaluation and inspection; the training sampler needs random access). A saved folder's
    Arrow files are checked against the checksums in ``make_data.json`` first (a mismatch or a missing file
    raises ``ValueError`` naming it; a folder without checksums is loaded with a one-time warning).
    """
    if isinstance(spec, Mapping):
        spec = dict(spec)
        kinds = _SPEC_KEYS & set(spec)
        if len(kinds) != 1:
            raise ValueError(
                f"a source mapping needs exactly one of {sorted(_SPEC_KEYS)}, got keys {sorted(spec)}"
            )
        if "augmentation" in spec:
            augmentation = _augmentation(spec.pop("augmentation"))
        tasks = spec.pop("tasks", tasks)
        kind = kinds.pop()
        if kind == "path":
            rest = set(spec) - {"path"}
            if rest:
                raise ValueError(f"a {{path: ...}} source takes no options, got {sorted(rest)}")
            return _load_folder(spec["path"], augment, seed, tasks, augmentation)
        if kind == "hub":
            return _load_hub(spec, augment, seed, tasks, augmentation)
        return _open_reader(spec, augment, seed, tasks, augmentation)
    text = str(spec)
    if text.endswith((".yaml", ".yml")):
        return load_source(_spec_file(Path(text)), augment, seed, tasks, augmentation)
    prefix, sep, rest = text.partition(":")
    if sep and prefix == "hub":
        return _load_hub({"hub": rest}, augment, seed, tasks, augmentation)
    if sep and prefix in reader_names():
        return _open_reader({"reader": prefix, "root": rest}, augment, seed, tasks, augmentation)
    path = Path(text)
    if path.is_dir() and not (path / "state.json").exists() and (path / "images").is_dir():
        return _open_reader({"reader": "plain", "root": path}, augment, seed, tasks, augmentation)
    return _load_folder(path, augment, seed, tasks, augmentation)


def _spec_file(path: Path) -> dict:
    """A YAML file holding one source mapping (the config entry of one data set)."""
    if not path.is_file():
        raise ValueError(f"source spec file {str(path)!r} does not exist")
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(spec, Mapping):
        raise ValueError(
            f"{path} must hold one source mapping ({{reader: ..., root: ...}}), got {type(spec).__name__}"
        )
    return dict(spec)


def _augmentation(value) -> Augmentation | None:
    if value is None or isinstance(value, Augmentation):
        return value
    if not isinstance(value, Mapping):
        raise ValueError(
            f"augmentation must be a mapping like {{hflip: true, jitter: [b, c, s, h]}}, got {value!r}"
        )
    value = dict(value)
    if value.get("jitter") is not None:
        value["jitter"] = tuple(float(v) for v in value["jitter"])
    try:
        return Augmentation(**value)
    except TypeError as err:
        raise ValueError(f"augmentation {value}: {err}") from None


def _open_reader(spec: dict, augment: bool, seed: int, tasks, augmentation):
    from stablemtl.data.readers import get_reader  # the readers import this module's neighbours

    spec = dict(spec)
    cls = get_reader(str(spec.pop("reader")))
    if "root" not in spec:
        raise ValueError(f"reader {cls.name!r} needs a root folder: {{reader: {cls.name}, root: ...}}")
    root = spec.pop("root")
    try:
        reader = cls(root, tasks=tasks, seed=seed, **spec)
    except TypeError as err:
        raise ValueError(f"reader {cls.name!r}: {err}") from None
    if augment:
        reader.use_training_augmentation(augmentation)
    return reader


def _load_hub(spec: dict, augment: bool, seed: int, tasks, augmentation):
    from datasets import load_dataset

    spec = dict(spec)
    name = str(spec.pop("hub"))
    split = spec.pop("split", "train")
    streaming = bool(spec.pop("streaming", False))
    revision = spec.pop("revision", None)
    if spec:
        raise ValueError(f"hub source {name!r}: unknown options {sorted(spec)} (split, revision, streaming)")
    try:
        table = load_dataset(name, split=split, revision=revision, streaming=streaming)
    except Exception as err:
        raise ValueError(
            f"hub source {name!r} (split {split!r}) cannot be loaded ({type(err).__name__}: {err})"
        ) from err
    if streaming:
        if augment:
            raise ValueError(f"hub source {name!r}: a streaming source cannot be augmented for training")
        return StreamingSource(table, name, tasks)
    _check_columns(table.column_names, name)
    dataset = SourceDataset(table, name, None, seed, tasks)
    if augment:
        _set_augmentation(dataset, augmentation)
    return dataset


def _check_columns(columns, where) -> None:
    for column in ("image", "source", "tasks"):
        if column not in columns:
            raise ValueError(f"{where}: column {column!r} is missing; columns: {columns}")


def _set_augmentation(dataset: SourceDataset, augmentation: Augmentation | None) -> None:
    if augmentation is None and dataset.source in profile_names():
        profile = get_profile(dataset.source)
        augmentation = profile.augmentation
        dataset.task_augmentation = dict(profile.task_augmentation)
    if augmentation is None:
        # Not silent: a source with no recipe of its own gets only the flip every task supports.
        logger.warning(
            "source %r has no augmentation recipe (not a profile): using a horizontal flip only; "
            "pass augmentation={...} to choose one",
            dataset.source,
        )
        augmentation = Augmentation()
    dataset.augmentation = augmentation


def _load_folder(path, augment: bool, seed: int, tasks, augmentation) -> SourceDataset:
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"source path {str(path)!r} is not a folder")
    if not (path / "state.json").exists():
        partial = (
            " (an unfinished make_dataset run: rerun it to resume)" if (path / "shards").exists() else ""
        )
        raise ValueError(
            f"{path} is not a saved data set: state.json is missing{partial}; a plain folder needs an "
            f"images/ subfolder, a reader is named as 'reader:root' ({', '.join(reader_names())})"
        )
    # Before Arrow memory-maps the files: damaged bytes can crash it or change rows without an error.
    verify_data_files(path)
    try:
        table = load_from_disk(str(path))
    except Exception as err:
        raise ValueError(f"{path} cannot be loaded as a data set ({type(err).__name__}: {err})") from err
    _check_columns(table.column_names, path)
    dataset = SourceDataset(table, str(path), None, seed, tasks)
    if augment:
        _set_augmentation(dataset, augmentation)
    return dataset


class StreamingSource(TorchIterableDataset):
    """Samples of a streaming ``datasets`` source, in order (only the ``tasks`` labels kept)."""

    def __init__(self, table, name: str, tasks=None) -> None:
        self._table, self.path = table, name
        self.tasks = check_tasks(tasks) if tasks is not None else None

    def __iter__(self):
        for index, row in enumerate(self._table):
            sample = row_to_sample(row, f"row {index} of {self.path}")
            if self.tasks is not None:
                for task in [t for t in sample["labels"] if t not in self.tasks]:
                    del sample["labels"][task], sample["valid"][task]
            yield sample


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
