"""NYUD-v2 in the multi-task layout of MTAN / MTL-PSL (the data of the HiTT and MTL-PSL papers):
``<root>/<part>/image/<i>.npy`` (``(288, 384, 3)``, [0, 1] floats or uint8), ``label/<i>.npy`` (13-class
ids 0..12, -1 = unlabelled), ``depth/<i>.npy`` (metres, 0 = invalid), ``normal/<i>.npy`` (unit vectors,
all-zero = invalid), with ``<part>`` = train (795 images) or val (654).

Partially labelled training (``protocol``): ``"one-label"`` keeps exactly one task per image, balanced
(265 images each); ``"random-labels"`` keeps ``k ~ U{1, 2}`` tasks per image, a random subset. The draw is
made once per image from ``label_seed`` (numpy's default_rng), so it never changes between epochs or
runs; ``label_file`` instead loads a fixed assignment: an ``(N, 3)`` 0/1 array (.npy, or the MTL-PSL
``onelabel.pth`` / ``randomlabels.pth`` dict with ``labels_weights``) in the task order semantics, depth,
normal. ``"full"`` (default) labels every task (the test protocol). Unlabelled tasks are absent from the
Sample, and ``rows_with_task`` lists the images labelling a task, so the sampler never draws an image for
a task it does not label. Normals are kept in the stored axes. The semantic ids are labelled
``"semantic_nyud"``, the 13-class task of ``stablemtl.tasks.semantic_nyud`` (the built-in ``"semantic"``
has the 8 Cityscapes classes).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from stablemtl.data.augment import Augmentation
from stablemtl.data.label_protocols import draw_labels
from stablemtl.data.readers.base import Entry, Reader, add_label, check_shape, new_sample
from stablemtl.data.readers.formats import read_npy
from stablemtl.tasks import IGNORE_INDEX, get_task

logger = logging.getLogger(__name__)

TASK_ORDER = ("semantic_nyud", "depth", "normal")  # the column order of the MTL-PSL label files
NUM_CLASSES = len(get_task("semantic_nyud").class_names)  # 13


def load_label_file(path: Path, num_images: int) -> np.ndarray:
    """A fixed ``(N, 3)`` assignment from ``.npy`` or an MTL-PSL ``.pth`` (``{'labels_weights': ...}``)."""
    if path.suffix == ".pth":
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)  # tensors only, no code
        except Exception as err:
            raise ValueError(f"{path}: not a tensor file ({type(err).__name__}: {err})") from err
        weights = data["labels_weights"] if isinstance(data, dict) else data
        array = np.asarray(weights.cpu().numpy() if hasattr(weights, "cpu") else weights)
    else:
        array = read_npy(path, "an (N, 3) 0/1 label assignment")
    if array.shape != (num_images, len(TASK_ORDER)) or not np.isin(array, (0, 1)).all():
        raise ValueError(f"{path}: expected an ({num_images}, 3) array of 0/1, got {array.shape}")
    return array.astype(bool)


class NyudReader(Reader):
    """NYUD-v2 (MTL layout) images labelling semantic_nyud (13 classes), depth (m) and normal, at 288x384."""

    name = "nyud"
    available_tasks = TASK_ORDER
    default_resolution = (288, 384)
    augmentation_default = Augmentation(hflip=True)  # the HiTT recipe's flip (its scale-crop is not here)

    def __init__(
        self,
        root,
        split=None,
        *args,
        part: str = "train",
        protocol: str = "full",
        label_seed: int = 0,
        label_file: str | Path | None = None,
        **kwargs,
    ) -> None:
        self.part = part
        super().__init__(root, split, *args, **kwargs)
        if label_file is not None:
            keep = load_label_file(self._resolve(label_file), len(self.entries))
        else:
            everything = np.ones((len(self.entries), len(TASK_ORDER)), dtype=bool)
            keep = draw_labels(everything, protocol, int(label_seed))
        wanted = np.array([t in self.tasks for t in TASK_ORDER])
        self.labels = [[t for t, k in zip(TASK_ORDER, row & wanted) if k] for row in keep]
        counts = {t: sum(t in row for row in self.labels) for t in self.tasks}
        logger.info("nyud %s (%s): labelled images per task %s", part, protocol, counts)

    def discover(self) -> list[Entry]:
        folder = self.root / self.part / "image"
        if not folder.is_dir():
            raise ValueError(f"nyud: {folder} is missing (expected <root>/{self.part}/image/<i>.npy)")
        ids = sorted(int(p.stem) for p in folder.glob("*.npy") if p.stem.isdigit())
        return [{"id": i} for i in ids]

    def parse_line(self, fields: list[str]) -> Entry:
        stem = Path(fields[0]).stem
        if not stem.isdigit():
            raise ValueError(f"{fields[0]!r} names no NYUD image index")
        return {"id": int(stem)}

    def _file(self, entry: Entry, kind: str) -> Path:
        return self.root / self.part / kind / f"{entry['id']}.npy"

    def files(self, entry: Entry, tasks: Sequence[str]) -> list[Path]:
        kinds = {"semantic_nyud": "label", "depth": "depth", "normal": "normal"}
        return [self._file(entry, "image")] + [self._file(entry, kinds[t]) for t in tasks]

    def tasks_of(self, index: int) -> list[str]:
        return list(self.labels[index])

    def load(self, entry: Entry, tasks: Sequence[str]) -> dict:
        image = read_npy(self._file(entry, "image"), "an (H, W, 3) image")
        if image.dtype == np.uint8:
            image = image.astype(np.float32) / 255.0
        elif not (np.issubdtype(image.dtype, np.floating) and image.min() >= 0 and image.max() <= 1.0 + 1e-6):
            raise ValueError(f"{self._file(entry, 'image')}: expected uint8 or floats in [0, 1]")
        check_shape(image, (None, None, 3), str(self._file(entry, "image")))
        sample = new_sample(
            torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().clamp(0, 1)
        )
        h, w = image.shape[:2]
        if "semantic_nyud" in tasks:
            label = read_npy(self._file(entry, "label"), "(H, W) class ids")
            check_shape(label, (h, w), str(self._file(entry, "label")))
            if np.any((label != -1) & ((label < 0) | (label >= NUM_CLASSES) | (label != np.round(label)))):
                raise ValueError(f"{self._file(entry, 'label')}: ids must be -1 or 0..{NUM_CLASSES - 1}")
            ids = np.where(label < 0, IGNORE_INDEX, label).astype(np.int64)
            add_label(sample, "semantic_nyud", ids[None], ids != IGNORE_INDEX)
        if "depth" in tasks:
            depth = read_npy(self._file(entry, "depth"), "(H, W[, 1]) depth").astype(np.float32)
            depth = depth[..., 0] if depth.ndim == 3 else depth
            check_shape(depth, (h, w), str(self._file(entry, "depth")))
            add_label(sample, "depth", depth[None], depth > 0)
        if "normal" in tasks:
            normal = read_npy(self._file(entry, "normal"), "(H, W, 3) normals").astype(np.float32)
            check_shape(normal, (h, w, 3), str(self._file(entry, "normal")))
            add_label(sample, "normal", normal.transpose(2, 0, 1), (normal != 0).any(-1))
        return sample
