"""Cityscapes semantic segmentation, in its own layout:

``<root>/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png`` and
``<root>/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png`` (8-bit label ids).

The label ids become the toolkit's 8 classes: road 7, building 11, pole 17, traffic light 19, traffic
sign 20, vegetation 21, sky 23, vehicle = car 26 + bus 28; every other id (sidewalk, person, truck, ...)
is ignored, as in the StableMTL paper's evaluation. Split files: one leftImg8bit or gtFine path per line.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from stablemtl.data.augment import Augmentation
from stablemtl.data.readers.base import Entry, Reader, add_label, check_shape, new_sample
from stablemtl.data.readers.formats import read_png_uint8, read_rgb
from stablemtl.tasks import IGNORE_INDEX

LABEL_IDS = {7: 0, 11: 1, 17: 2, 19: 3, 20: 4, 21: 5, 23: 6, 26: 7, 28: 7}
_NAME = re.compile(r"(?:leftImg8bit|gtFine)/([^/]+)/([^/]+)/(\w+?_\d+_\d+)_(?:leftImg8bit|gtFine_\w+)\.png$")


def label_ids_to_classes(label_ids: np.ndarray) -> np.ndarray:
    """Cityscapes labelIds ``(H, W)`` -> 8-class ids (others: IGNORE_INDEX)."""
    lookup = np.full(256, IGNORE_INDEX, dtype=np.int64)
    for label_id, cls in LABEL_IDS.items():
        lookup[label_id] = cls
    return lookup[label_ids]


class CityscapesReader(Reader):
    """Cityscapes frames labelling semantic (8 classes), at 256x512 (the official evaluation size)."""

    name = "cityscapes"
    available_tasks = ("semantic",)
    default_resolution = (256, 512)
    augmentation_default = Augmentation(hflip=True)  # a benchmark: the official code never trains on it

    def discover(self) -> list[Entry]:
        return [self._entry(p) for p in sorted(self.root.glob("leftImg8bit/*/*/*_leftImg8bit.png"))]

    def parse_line(self, fields: list[str]) -> Entry:
        return self._entry(Path(fields[0]))

    def _entry(self, path: Path) -> Entry:
        match = _NAME.search(path.as_posix())
        if match is None:
            raise ValueError(f"{path} is not a Cityscapes leftImg8bit/ or gtFine/ file name")
        split, city, stem = match.groups()
        return {
            "image": self.root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png",
            "label": self.root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png",
        }

    def files(self, entry: Entry, tasks: Sequence[str]) -> list[Path]:
        return [entry["image"], entry["label"]]

    def load(self, entry: Entry, tasks: Sequence[str]) -> dict:
        sample = new_sample(read_rgb(entry["image"]))
        label_ids = read_png_uint8(entry["label"])
        check_shape(label_ids, tuple(sample["image"].shape[-2:]), str(entry["label"]))
        ids = label_ids_to_classes(label_ids)
        add_label(sample, "semantic", ids[None], ids != IGNORE_INDEX)
        return sample
