"""DIODE (indoor and outdoor), in its own layout: ``<root>/<split>/<indoors|outdoor>/scene_*/scan_*/``
``<name>.png``, ``<name>_depth.npy`` (``(H, W, 1)`` metres), ``<name>_depth_mask.npy`` (``(H, W)``) and
``<name>_normal.npy`` (``(H, W, 3)``, zero where unknown).

Depth is valid where the shipped mask is set and the depth positive; evaluate with predictions clipped to
[0.6, 350] m (``stablemtl-eval --min_depth 0.6 --max_depth 350``). DIODE's normals point +x right, so
the x component is negated into the toolkit's axes; a normal is valid where its length is in (0.5, 1.5).
Split files: one rgb path per line (relative to ``root``; further columns are ignored).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from stablemtl.data.augment import Augmentation
from stablemtl.data.readers.base import Entry, Reader, add_label, check_shape, new_sample
from stablemtl.data.readers.formats import read_npy, read_rgb


class DiodeReader(Reader):
    """DIODE frames labelling depth (m) and normal, at 384x512 (the official evaluation size)."""

    name = "diode"
    available_tasks = ("depth", "normal")
    default_resolution = (384, 512)
    augmentation_default = Augmentation(hflip=True)  # a benchmark: the official code never trains on it

    def discover(self) -> list[Entry]:
        return [self._entry(p) for p in sorted(self.root.glob("**/scan_*/*.png"))]

    def parse_line(self, fields: list[str]) -> Entry:
        if not fields[0].endswith(".png"):
            raise ValueError(f"{fields[0]!r} is not a DIODE .png image path")
        return self._entry(self.root / fields[0])

    @staticmethod
    def _entry(rgb: Path) -> Entry:
        stem = rgb.with_suffix("")
        return {
            "rgb": rgb,
            "depth": Path(f"{stem}_depth.npy"),
            "depth_mask": Path(f"{stem}_depth_mask.npy"),
            "normal": Path(f"{stem}_normal.npy"),
        }

    def files(self, entry: Entry, tasks: Sequence[str]) -> list[Path]:
        keys = {"depth": ["depth", "depth_mask"], "normal": ["normal"]}
        return [entry["rgb"]] + [entry[k] for t in tasks for k in keys[t]]

    def load(self, entry: Entry, tasks: Sequence[str]) -> dict:
        sample = new_sample(read_rgb(entry["rgb"]))
        h, w = sample["image"].shape[-2:]
        if "depth" in tasks:
            depth = read_npy(entry["depth"], "(H, W, 1) depth").astype(np.float32)
            depth = depth[..., 0] if depth.ndim == 3 else depth
            mask = read_npy(entry["depth_mask"], "an (H, W) mask")
            check_shape(depth, (h, w), str(entry["depth"]))
            check_shape(mask, (h, w), str(entry["depth_mask"]))
            add_label(sample, "depth", depth[None], (mask > 0) & (depth > 0))
        if "normal" in tasks:
            normal = read_npy(entry["normal"], "(H, W, 3) normals").astype(np.float32)
            check_shape(normal, (h, w, 3), str(entry["normal"]))
            normal = normal * np.array([-1.0, 1.0, 1.0], dtype=np.float32)
            length = np.linalg.norm(normal, axis=-1)
            add_label(sample, "normal", normal.transpose(2, 0, 1), (length > 0.5) & (length < 1.5))
        return sample
