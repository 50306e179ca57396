"""Hypersim, in the preprocessed layout of the StableMTL paper's release (one folder per scene).

``<root>/<scene>/rgb_<cam>_fr<NNNN>.png`` (8-bit, tone-mapped), ``depth_plane_<..>.png`` (16-bit,
millimetres, 0 = invalid), ``normal_cam_<..>.npy`` (``(H, W, 3)`` float, already in the toolkit's
axes), ``normal_valid_mask_<..>.npy`` (``(H, W)`` bool), ``albedo_<..>.png`` and ``shading_<..>.png``
(8-bit, linear). Split files are the official 5-column lists (rgb, depth, normal npy, normal png, normal
mask) or one rgb path per line.

The albedo is read from ``albedo_*`` (what the preprocessing writes; the official loaders looked for
``reflectance_*``, which it never writes).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from stablemtl.data.augment import Augmentation
from stablemtl.data.readers.base import (
    Entry,
    Reader,
    add_intrinsic_labels,
    add_label,
    check_shape,
    new_sample,
)
from stablemtl.data.readers.formats import read_npy, read_png16, read_rgb

MIN_DEPTH, MAX_DEPTH = 1e-5, 65.0  # metres; 0 marks pixels without geometry
_RGB = re.compile(r"rgb_(cam_\d+_fr\d+)\.png$")


class HypersimReader(Reader):
    """Hypersim frames labelling depth (m), normal, albedo and shading (grey, [0, 1]), at 288x384."""

    name = "hypersim"
    available_tasks = ("depth", "normal", "albedo", "shading")
    default_resolution = (288, 384)
    augmentation_default = Augmentation(hflip=True)  # official: horizontal flip only, every task

    def discover(self) -> list[Entry]:
        return [self._entry(p) for p in sorted(self.root.glob("*/rgb_cam_*_fr*.png"))]

    def parse_line(self, fields: list[str]) -> Entry:
        return self._entry(self.root / fields[0])

    def _entry(self, rgb: Path) -> Entry:
        match = _RGB.search(rgb.name)
        if match is None:
            raise ValueError(f"{rgb.name!r} is not a Hypersim rgb_cam_XX_frNNNN.png file")
        folder, key = rgb.parent, match.group(1)
        return {
            "rgb": rgb,
            "depth": folder / f"depth_plane_{key}.png",
            "normal": folder / f"normal_cam_{key}.npy",
            "normal_mask": folder / f"normal_valid_mask_{key}.npy",
            "albedo": folder / f"albedo_{key}.png",
            "shading": folder / f"shading_{key}.png",
        }

    def files(self, entry: Entry, tasks: Sequence[str]) -> list[Path]:
        needed = {"depth": ["depth"], "normal": ["normal", "normal_mask"], "albedo": ["albedo"]}
        needed["shading"] = ["shading", "albedo"]  # the shading mask is the albedo mask
        return [entry["rgb"]] + [entry[k] for t in tasks for k in needed[t]]

    def load(self, entry: Entry, tasks: Sequence[str]) -> dict:
        sample = new_sample(read_rgb(entry["rgb"]))
        h, w = sample["image"].shape[-2:]
        if "depth" in tasks:
            depth = read_png16(entry["depth"], 1).astype(np.float32) / 1000.0
            check_shape(depth, (h, w), str(entry["depth"]))
            add_label(sample, "depth", depth[None], (depth > MIN_DEPTH) & (depth < MAX_DEPTH))
        if "normal" in tasks:
            normal = read_npy(entry["normal"], "(H, W, 3) normals")
            mask = read_npy(entry["normal_mask"], "an (H, W) mask")
            check_shape(normal, (h, w, 3), str(entry["normal"]))
            check_shape(mask, (h, w), str(entry["normal_mask"]))
            add_label(sample, "normal", normal.transpose(2, 0, 1), mask.astype(bool))
        add_intrinsic_labels(sample, entry["albedo"], entry["shading"], tasks)
        return sample
