"""The shared machinery of every reader: split files, file checks, resizing, augmentation.

A reader turns one data set's own on-disk layout into Sample dicts (see ``stablemtl.data``). It
behaves like the folders ``load_source`` opens (``source``, ``tasks``, ``item(index, task)``,
``set_epoch``, ``rows_with_task``), so the training sampler and the evaluator take it as it is.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset as TorchDataset

from stablemtl.data.augment import Augmentation, augment_sample
from stablemtl.data.readers.formats import read_rgb
from stablemtl.data.readers.geometry import albedo_valid, luminance
from stablemtl.tasks import check_tasks, get_task

logger = logging.getLogger(__name__)

Entry = dict[str, Any]  # one frame: the paths (and per-frame facts) a reader needs to load it


class Reader(TorchDataset):
    """Base class of the readers: one data set, one split, one resolution.

    Args:
        root: the data set folder, laid out as the data set ships (see each reader).
        split: a split file (official format of the data set, or one frame per line); relative paths
            are looked up in ``root`` first. None lists every complete frame under ``root``. A mapping
            ``{task: split file}`` gives each task its own list (as the official per-task lists do): a
            frame labels the tasks whose lists name it, and ``tasks`` defaults to the mapping's keys.
        resolution: ``(H, W)`` of the returned samples; "default" is the reader's official size, None
            keeps the native size (after the reader's crop, if any).
        tasks: the tasks to label (default: all the reader can label).
        source: the source name used by ``source_weights`` (default: the reader's name).
        seed: seed of the training augmentation.
        rescale_flow: scale optical-flow vectors with the resize, so flows are in pixels of the returned
            grid (the official code keeps full-resolution units; pass False for that).

    Subclasses set ``name``, ``available_tasks``, ``default_resolution``, ``augmentation`` (and
    ``task_augmentation``), and implement ``discover``, ``parse_line``, ``files`` and ``load``.
    """

    name: ClassVar[str]
    available_tasks: ClassVar[tuple[str, ...]]
    default_resolution: ClassVar[tuple[int, int] | None] = None
    augmentation_default: ClassVar[Augmentation]
    task_augmentation_default: ClassVar[Mapping[str, Augmentation]] = {}

    def __init__(
        self,
        root: str | Path,
        split: str | Path | Mapping[str, str | Path] | None = None,
        resolution: Sequence[int] | str | None = "default",
        tasks: Iterable[str] | None = None,
        source: str | None = None,
        seed: int = 0,
        rescale_flow: bool = True,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"{self.name}: root {str(self.root)!r} is not a folder")
        if isinstance(split, Mapping) and tasks is None:
            tasks = [t for t in self.available_tasks if t in split] + [
                t for t in split if t not in self.available_tasks
            ]
        self.tasks = self._select_tasks(tasks)
        self.resolution = self._resolution(resolution)
        self.source = str(source or self.name)
        self.seed, self.epoch = int(seed), 0
        self.rescale_flow = bool(rescale_flow)
        self.augmentation: Augmentation | None = None  # set by load_source(augment=True)
        self.task_augmentation: dict[str, Augmentation] = {}
        self.path = str(self.root)
        self._labels: list[list[str]] | None = None  # per-frame tasks under per-task split files
        if isinstance(split, Mapping):
            self.entries = self._read_task_splits(split)
        else:
            self.entries = self._read_split(split) if split is not None else self._discover()

    # -- subclass hooks ---------------------------------------------------------------------------
    def discover(self) -> list[Entry]:
        """Every frame under ``root`` (complete or not; incomplete ones are dropped and counted)."""
        raise NotImplementedError

    def parse_line(self, fields: list[str]) -> Entry | None:
        """One split-file line (whitespace-split) -> an entry; None for a line the format marks as
        having no ground truth (dropped and counted). Raise ValueError for a line it cannot read."""
        raise NotImplementedError

    def files(self, entry: Entry, tasks: Sequence[str]) -> list[Path]:
        """The files that loading ``entry`` for ``tasks`` reads (checked to exist up front)."""
        raise NotImplementedError

    def load(self, entry: Entry, tasks: Sequence[str]) -> dict:
        """A Sample at the native resolution (after the reader's crop) labelling ``tasks``."""
        raise NotImplementedError

    # -- construction helpers -------------------------------------------------------------------
    def _select_tasks(self, tasks: Iterable[str] | None) -> list[str]:
        if tasks is None:
            return list(self.available_tasks)
        tasks = check_tasks(list(tasks))
        unknown = [t for t in tasks if t not in self.available_tasks]
        if unknown:
            raise ValueError(f"{self.name} does not label {unknown}; it labels {list(self.available_tasks)}")
        return tasks

    def _resolution(self, resolution) -> tuple[int, int] | None:
        if resolution == "default":
            return self.default_resolution
        if resolution is None:
            return None
        if isinstance(resolution, str) or len(resolution) != 2 or min(int(r) for r in resolution) < 8:
            raise ValueError(f"resolution must be [H, W] (each >= 8), 'default' or None, got {resolution!r}")
        return int(resolution[0]), int(resolution[1])

    def _resolve(self, path: str | Path) -> Path:
        path = Path(path)
        return path if path.is_absolute() or not (self.root / path).exists() else self.root / path

    def _read_task_splits(self, splits: Mapping[str, str | Path]) -> list[Entry]:
        missing = [t for t in self.tasks if t not in splits]
        if missing:
            raise ValueError(f"{self.name}: split gives lists for {sorted(splits)}, none for tasks {missing}")
        order: dict[tuple, Entry] = {}
        labels: dict[tuple, list[str]] = {}
        for task in self.tasks:
            for entry in self._read_split(splits[task], [task]):
                key = tuple(sorted((k, str(v)) for k, v in entry.items()))
                order.setdefault(key, entry)
                labels.setdefault(key, []).append(task)
        self._labels = [labels[k] for k in order]
        return list(order.values())

    def _read_split(self, split: str | Path, tasks: Sequence[str] | None = None) -> list[Entry]:
        tasks = self.tasks if tasks is None else tasks
        split_path = self._resolve(split)
        if not split_path.is_file():
            raise ValueError(f"{self.name}: split file {str(split)!r} does not exist (nor in {self.root})")
        entries, dropped = [], 0
        for number, line in enumerate(split_path.read_text().splitlines(), start=1):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            try:
                entry = self.parse_line(fields)
            except ValueError as err:
                raise ValueError(f"{split_path}:{number}: {err}") from None
            if entry is None:
                dropped += 1
            else:
                entries.append(entry)
        if dropped:
            logger.info(
                "%s: %d line(s) of %s have no ground truth and are skipped", self.name, dropped, split_path
            )
        missing = [
            (i, p)
            for i, e in enumerate(entries)
            for p in dict.fromkeys(self.files(e, tasks))
            if not p.exists()
        ]
        if missing:
            shown = ", ".join(str(p) for _, p in missing[:5])
            raise ValueError(
                f"{self.name}: {len(missing)} file(s) named by {split_path} are absent "
                f"({len({i for i, _ in missing})} of {len(entries)} frames), e.g. {shown}"
            )
        if not entries:
            raise ValueError(f"{self.name}: split file {split_path} names no frame")
        return entries

    def _discover(self) -> list[Entry]:
        found = self.discover()
        complete = [e for e in found if all(p.exists() for p in self.files(e, self.tasks))]
        if len(complete) < len(found):
            logger.warning(
                "%s: %d of %d frames under %s lack a file for %s and are skipped",
                self.name,
                len(found) - len(complete),
                len(found),
                self.root,
                self.tasks,
            )
        if not complete:
            raise ValueError(f"{self.name}: no complete frame for {self.tasks} under {self.root}")
        return complete

    # -- the Dataset interface ------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.entries)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def rows_with_task(self, task: str) -> list[int]:
        """Indices of the frames that label ``task``."""
        get_task(task)
        return [i for i in range(len(self)) if task in self.tasks_of(i)]

    def tasks_of(self, index: int) -> list[str]:
        """The tasks frame ``index`` labels (all of ``tasks`` unless per-task split files say otherwise)."""
        return list(self.tasks) if self._labels is None else list(self._labels[index])

    def raw(self, index: int, tasks: Sequence[str] | None = None) -> dict:
        """Frame ``index`` as an unaugmented Sample at ``resolution`` (labels for ``tasks``, default all)."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"frame {index} is out of range for {len(self)} frames of {self.name}")
        own = self.tasks_of(index)
        tasks = own if tasks is None else [t for t in tasks if t in own]
        try:
            sample = self.load(self.entries[index], tasks)
        except ValueError as err:
            raise ValueError(f"{self.name} frame {index}: {err}") from None
        sample["source"] = self.source
        return self._resize(sample)

    def __getitem__(self, index: int) -> dict:
        return self.item(index)

    def item(self, index: int, task: str | None = None) -> dict:
        """Frame ``index`` as a training sample of ``task`` (only that label is read), augmented with the
        reader's augmentation for that task when ``augmentation`` is set; ``item(i)`` labels every task."""
        sample = self.raw(index, None if task is None else [task])
        if self.augmentation is None:
            return sample
        augmentation = self.task_augmentation.get(task, self.augmentation) if task else self.augmentation
        generator = torch.Generator().manual_seed(
            zlib.crc32(f"{self.seed}/{self.epoch}/{int(index)}/{self.source}".encode())
        )
        return augment_sample(sample, augmentation, generator)

    def use_training_augmentation(self, augmentation: Augmentation | None = None) -> None:
        """Augment ``item`` with ``augmentation`` for every task, or with the reader's own recipe."""
        if augmentation is not None:
            self.augmentation, self.task_augmentation = augmentation, {}
        else:
            self.augmentation = self.augmentation_default
            self.task_augmentation = dict(self.task_augmentation_default)

    # -- resizing -------------------------------------------------------------------------------
    def _resize(self, sample: dict) -> dict:
        if self.resolution is None:
            return sample
        height, width = sample["image"].shape[-2:]
        new_h, new_w = self.resolution
        if (height, width) == (new_h, new_w):
            return sample
        # RGB: bilinear with anti-aliasing (the official nearest resize of RGB aliases); labels and
        # masks: nearest, so no label value is ever invented by interpolation.
        for key in ("image", "next_image"):
            if sample.get(key) is not None:
                image = F.interpolate(sample[key][None], (new_h, new_w), mode="bilinear", antialias=True)
                sample[key] = image[0].clamp(0, 1)
        for task, label in sample["labels"].items():
            resized = F.interpolate(label[None].float(), (new_h, new_w), mode="nearest-exact")[0]
            if task == "optical_flow" and self.rescale_flow:
                resized = resized * torch.tensor([new_w / width, new_h / height]).view(2, 1, 1)
            sample["labels"][task] = resized.to(label.dtype)
            valid = sample["valid"][task][None, None].float()
            sample["valid"][task] = F.interpolate(valid, (new_h, new_w), mode="nearest-exact")[0, 0] > 0.5
        if sample.get("intrinsics") is not None:
            k = sample["intrinsics"].clone()
            sx, sy = new_w / width, new_h / height
            k[0, 0], k[1, 1] = k[0, 0] * sx, k[1, 1] * sy
            # Pixel centres: x' + 0.5 = (x + 0.5) * s.
            k[0, 2], k[1, 2] = (k[0, 2] + 0.5) * sx - 0.5, (k[1, 2] + 0.5) * sy - 0.5
            sample["intrinsics"] = k
        return sample

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, frames={len(self)}, tasks={self.tasks})"


def new_sample(image: torch.Tensor, next_image: torch.Tensor | None = None) -> dict:
    """An empty Sample around ``image`` (``(3, H, W)`` in [0, 1]); readers add labels to it."""
    sample: dict = {"image": image, "labels": {}, "valid": {}}
    if next_image is not None:
        if next_image.shape != image.shape:
            raise ValueError(f"the second frame is {tuple(next_image.shape)}, the first {tuple(image.shape)}")
        sample["next_image"] = next_image
    return sample


def add_label(sample: dict, task: str, label, valid) -> None:
    """Attach ``label`` (``(C, H, W)``; numpy or torch) and ``valid`` (``(H, W)``) for ``task``; pixels with
    a non-finite label value are invalid."""
    label = torch.as_tensor(label)
    # The task's own label dtype (int64 class ids for every discrete task, not only "semantic").
    label = label.to(get_task(task).label_dtype)
    valid = torch.as_tensor(valid).bool()
    channels = get_task(task).label_channels
    height, width = sample["image"].shape[-2:]
    if label.shape != (channels, height, width) or valid.shape != (height, width):
        raise ValueError(
            f"{task} label {tuple(label.shape)} / valid {tuple(valid.shape)} do not match a "
            f"({channels}, {height}, {width}) label of the image"
        )
    if label.is_floating_point():
        finite = torch.isfinite(label).all(0)
        valid = valid & finite
        label = torch.where(finite[None], label, torch.zeros(()))
    sample["labels"][task], sample["valid"][task] = label, valid


def add_intrinsic_labels(sample: dict, albedo_file, shading_file, tasks: Sequence[str]) -> None:
    """Add albedo (RGB in [0, 1]) and shading (the luminance of an RGB shading image) from their files,
    as ``tasks`` ask; both are valid where every albedo channel is >= 0.004 (the official mask)."""
    if "albedo" not in tasks and "shading" not in tasks:
        return
    h, w = sample["image"].shape[-2:]
    albedo = read_rgb(albedo_file).permute(1, 2, 0).numpy()
    check_shape(albedo, (h, w, 3), str(albedo_file))
    valid = albedo_valid(albedo)
    if "albedo" in tasks:
        add_label(sample, "albedo", albedo.transpose(2, 0, 1), valid)
    if "shading" in tasks:
        shading = luminance(read_rgb(shading_file).permute(1, 2, 0).numpy())
        check_shape(shading, (h, w), str(shading_file))
        add_label(sample, "shading", shading[None], valid)


def check_shape(array, shape: tuple, what: str) -> None:
    """Raise ValueError when ``array`` (numpy or torch) does not have ``shape`` (None matches anything)."""
    actual = tuple(array.shape)
    if len(actual) != len(shape) or any(s is not None and s != a for s, a in zip(shape, actual)):
        raise ValueError(
            f"{what} has shape {actual}, expected {tuple('*' if s is None else s for s in shape)}"
        )
