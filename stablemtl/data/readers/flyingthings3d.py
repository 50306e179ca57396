"""FlyingThings3D "subset" (the DispNet/FlowNet2 release), in its own layout under ``<root>/<split>/``:

``image_clean/left/NNNNNNN.png``; ``flow/left/into_future/NNNNNNN.flo`` (pixels);
``disparity/left/NNNNNNN.pfm`` and ``disparity_change/left/into_future/NNNNNNN.pfm`` (pixels).

Scene flow comes from the disparity ``d0``, the disparity change ``dc`` (so ``d1 = d0 + dc`` is the
disparity of the same point one frame later) and the flow, with f = 1050 px, baseline 1, principal point
(479.5, 269.5): ``backproject(x + u, y + v, f/d1) - backproject(x, y, f/d0)``, valid where both depths are
below 35 and the flow is valid. Frames are centre-cropped from 540 to 536 rows (the official size); the
crop happens after the scene flow is computed, so the principal point is the uncropped one (the official
code kept cy = 269.5 for already-cropped pixels; the returned intrinsics carry cy = 267.5).
Optical flow is valid where ``|u|, |v| < 500`` (as the official preprocessing enforces).
Split files: one path per line with the split folder and the 7-digit frame id (``val/flow_2d/0000146.png``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from stablemtl.data.augment import Augmentation
from stablemtl.data.readers.base import Entry, Reader, add_label, check_shape, new_sample
from stablemtl.data.readers.formats import read_flo, read_pfm, read_rgb
from stablemtl.data.readers.geometry import scene_flow_from_disparities

FOCAL, BASELINE, CX, CY = 1050.0, 1.0, 479.5, 269.5
MAX_DEPTH = 35.0
MAX_FLOW = 500.0
CROP_HEIGHT = 536
_LINE = re.compile(r"(?:^|/)(train|val)/(?:.*/)?(\d{7})\.\w+$")


class FlyingThings3DReader(Reader):
    """FT3D subset frame pairs labelling optical flow (px) and scene flow (OpenCV axes), at 268x480."""

    name = "flyingthings3d"
    available_tasks = ("optical_flow", "scene_flow")
    default_resolution = (268, 480)
    # Official: colour jitter (0.3, 0.3, 0.3, hue 0.159), horizontal and vertical flips.
    augmentation_default = Augmentation(hflip=True, vflip=True, jitter=(0.3, 0.3, 0.3, 0.159))

    def discover(self) -> list[Entry]:
        flows = sorted(self.root.glob("*/flow/left/into_future/*.flo"))
        return [{"split": p.parents[3].name, "frame": int(p.stem)} for p in flows]

    def parse_line(self, fields: list[str]) -> Entry:
        match = _LINE.search(fields[0])
        if match is None:
            raise ValueError(f"{fields[0]!r} names no train/ or val/ frame with a 7-digit id")
        return {"split": match.group(1), "frame": int(match.group(2))}

    def _file(self, entry: Entry, kind: str, frame: int | None = None) -> Path:
        frame = entry["frame"] if frame is None else frame
        folder, ext = {
            "image": ("image_clean/left", "png"),
            "flow": ("flow/left/into_future", "flo"),
            "disparity": ("disparity/left", "pfm"),
            "disparity_change": ("disparity_change/left/into_future", "pfm"),
        }[kind]
        return self.root / entry["split"] / folder / f"{frame:07d}.{ext}"

    def files(self, entry: Entry, tasks: Sequence[str]) -> list[Path]:
        out = [
            self._file(entry, "image"),
            self._file(entry, "image", entry["frame"] + 1),
            self._file(entry, "flow"),
        ]
        if "scene_flow" in tasks:
            out += [self._file(entry, "disparity"), self._file(entry, "disparity_change")]
        return out

    def load(self, entry: Entry, tasks: Sequence[str]) -> dict:
        image = read_rgb(self._file(entry, "image"))
        next_image = read_rgb(self._file(entry, "image", entry["frame"] + 1))
        h, w = image.shape[-2:]
        top = (h - CROP_HEIGHT) // 2
        if top < 0:
            raise ValueError(f"frame is {h} rows, fewer than the {CROP_HEIGHT}-row crop")
        rows = slice(top, top + CROP_HEIGHT)
        sample = new_sample(image[:, rows], next_image[:, rows])
        sample["intrinsics"] = torch.tensor([[FOCAL, 0, CX], [0, FOCAL, CY - top], [0, 0, 1]])
        flow = read_flo(self._file(entry, "flow"))
        check_shape(flow, (h, w, 2), "flow")
        flow_valid = np.isfinite(flow).all(-1) & (np.abs(flow) < MAX_FLOW).all(-1)
        flow = np.where(flow_valid[..., None], flow, 0.0)
        if "optical_flow" in tasks:
            add_label(sample, "optical_flow", flow[rows].transpose(2, 0, 1), flow_valid[rows])
        if "scene_flow" in tasks:
            d0 = read_pfm(self._file(entry, "disparity"))
            change = read_pfm(self._file(entry, "disparity_change"))
            check_shape(d0, (h, w), "disparity")
            check_shape(change, (h, w), "disparity change")
            motion, valid = scene_flow_from_disparities(flow, d0, d0 + change, FOCAL, BASELINE, CX, CY)
            with np.errstate(divide="ignore"):
                near = (FOCAL * BASELINE / d0 < MAX_DEPTH) & (FOCAL * BASELINE / (d0 + change) < MAX_DEPTH)
            valid &= near & flow_valid
            add_label(sample, "scene_flow", motion[rows].transpose(2, 0, 1), valid[rows])
        return sample
