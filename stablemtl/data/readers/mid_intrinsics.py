"""MIT Multi-Illumination (MID) intrinsics, in the preprocessed layout of the StableMTL paper's release:
``<root>/<split>/<name>.jpg`` (tone-mapped input), ``<name>_albedo.jpg`` and ``<name>_shading.jpg``
(linear, clipped to [0, 1], 8-bit).

Albedo is ``/255`` and valid where every channel is >= 0.004; shading is the luminance
``0.3 R + 0.59 G + 0.11 B`` of the shading image ``/255``, with the albedo's mask.
Split files: one image path per line (``test/everett_dining1_dir_13_mip2.jpg``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from stablemtl.data.augment import Augmentation
from stablemtl.data.readers.base import (
    Entry,
    Reader,
    add_intrinsic_labels,
    new_sample,
)
from stablemtl.data.readers.formats import read_rgb


class MidIntrinsicsReader(Reader):
    """MID intrinsics frames labelling albedo and shading ([0, 1]), at 256x384."""

    name = "mid_intrinsics"
    available_tasks = ("albedo", "shading")
    default_resolution = (256, 384)
    augmentation_default = Augmentation(hflip=True)  # a benchmark: the official code never trains on it

    def discover(self) -> list[Entry]:
        images = sorted(self.root.glob("**/*.jpg"))
        return [self._entry(p) for p in images if not p.stem.endswith(("_albedo", "_shading"))]

    def parse_line(self, fields: list[str]) -> Entry:
        return self._entry(self.root / fields[0])

    @staticmethod
    def _entry(image: Path) -> Entry:
        stem = image.with_suffix("")
        return {"image": image, "albedo": Path(f"{stem}_albedo.jpg"), "shading": Path(f"{stem}_shading.jpg")}

    def files(self, entry: Entry, tasks: Sequence[str]) -> list[Path]:
        return [entry["image"], entry["albedo"]] + ([entry["shading"]] if "shading" in tasks else [])

    def load(self, entry: Entry, tasks: Sequence[str]) -> dict:
        sample = new_sample(read_rgb(entry["image"]))
        add_intrinsic_labels(sample, entry["albedo"], entry["shading"], tasks)
        return sample
