"""KITTI flow 2015 (the scene-flow benchmark's 200 training pairs), in its own layout under ``<root>``:

``training/image_2/NNNNNN_10.png`` and ``NNNNNN_11.png`` (the pair); ``training/flow_occ/NNNNNN_10.png``
(16-bit RGB flow, ``u = (R - 2^15) / 64``, valid where B > 0); ``training/disp_occ_0/NNNNNN_10.png`` and
``training/disp_occ_1/NNNNNN_10.png`` (16-bit disparities / 256, 0 = none; ``disp_occ_1`` is the
disparity of each frame-0 pixel's point at time 1); ``training/calib_cam_to_cam/NNNNNN.txt``
(``P_rect_02``: focal and principal point).

Scene flow (metres, OpenCV axes) = ``backproject(x + u, y + v, f b / d1) - backproject(x, y, f b / d0)``
with baseline b = 0.54 m, valid where both disparities and the flow are. Frames get the KITTI
benchmark crop (bottom 352 rows, centred 1216 columns) after that computation and are returned at
176x608. Split files: one frame id per line (``000000`` or ``000000_10``, any path around it).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from stablemtl.data.augment import Augmentation
from stablemtl.data.readers.base import Entry, Reader, add_label, check_shape, new_sample
from stablemtl.data.readers.formats import read_kitti_flow, read_png16, read_rgb
from stablemtl.data.readers.geometry import (
    KITTI_BENCHMARK_HW,
    bottom_centre_crop,
    scene_flow_from_disparities,
)

BASELINE = 0.54
_ID = re.compile(r"(\d{6})(?:_1[01])?(?:\.\w+)?$")


def read_calibration(path: Path) -> tuple[float, float, float]:
    """``(f, cx, cy)`` of the left colour camera from the ``P_rect_02`` row of a calib_cam_to_cam file."""
    for line in path.read_text().splitlines():
        if line.startswith("P_rect_02:"):
            values = [float(v) for v in line.split()[1:]]
            if len(values) != 12:
                raise ValueError(f"{path}: P_rect_02 has {len(values)} values, expected 12")
            return values[0], values[2], values[6]
    raise ValueError(f"{path}: no P_rect_02 row")


class KittiFlowReader(Reader):
    """KITTI 2015 pairs labelling optical flow (flow_occ, px) and scene flow, at 176x608."""

    name = "kitti_flow"
    available_tasks = ("optical_flow", "scene_flow")
    default_resolution = (176, 608)
    augmentation_default = Augmentation(hflip=True)  # a benchmark: the official code never trains on it

    def discover(self) -> list[Entry]:
        return [{"id": p.stem[:6]} for p in sorted((self.root / "training" / "flow_occ").glob("*_10.png"))]

    def parse_line(self, fields: list[str]) -> Entry:
        match = _ID.search(fields[0])
        if match is None:
            raise ValueError(f"{fields[0]!r} names no 6-digit KITTI frame id")
        return {"id": match.group(1)}

    def _file(self, entry: Entry, kind: str) -> Path:
        frame = entry["id"]
        name = {
            "image": f"image_2/{frame}_10.png",
            "next_image": f"image_2/{frame}_11.png",
            "flow": f"flow_occ/{frame}_10.png",
            "disp0": f"disp_occ_0/{frame}_10.png",
            "disp1": f"disp_occ_1/{frame}_10.png",
            "calib": f"calib_cam_to_cam/{frame}.txt",
        }[kind]
        return self.root / "training" / name

    def files(self, entry: Entry, tasks: Sequence[str]) -> list[Path]:
        kinds = ["image", "next_image", "flow"]
        if "scene_flow" in tasks:
            kinds += ["disp0", "disp1", "calib"]
        return [self._file(entry, k) for k in kinds]

    def load(self, entry: Entry, tasks: Sequence[str]) -> dict:
        height, width = KITTI_BENCHMARK_HW
        image = read_rgb(self._file(entry, "image")).permute(1, 2, 0).numpy()
        next_image = read_rgb(self._file(entry, "next_image")).permute(1, 2, 0).numpy()
        flow, flow_valid = read_kitti_flow(self._file(entry, "flow"))
        check_shape(flow, (*image.shape[:2], 2), "flow_occ")

        def crop(array: np.ndarray) -> torch.Tensor:
            cropped, _, _ = bottom_centre_crop(array, height, width)
            return torch.from_numpy(np.ascontiguousarray(cropped))

        sample = new_sample(crop(image).permute(2, 0, 1), crop(next_image).permute(2, 0, 1))
        _, top, left = bottom_centre_crop(image, height, width)
        if "optical_flow" in tasks:
            add_label(sample, "optical_flow", crop(flow).permute(2, 0, 1), crop(flow_valid))
        if "scene_flow" in tasks:
            focal, cx, cy = read_calibration(self._file(entry, "calib"))
            d0 = read_png16(self._file(entry, "disp0"), 1).astype(np.float32) / 256.0
            d1 = read_png16(self._file(entry, "disp1"), 1).astype(np.float32) / 256.0
            check_shape(d0, image.shape[:2], "disp_occ_0")
            check_shape(d1, image.shape[:2], "disp_occ_1")
            motion, valid = scene_flow_from_disparities(flow, d0, d1, focal, BASELINE, cx, cy)
            add_label(sample, "scene_flow", crop(motion).permute(2, 0, 1), crop(valid & flow_valid))
            sample["intrinsics"] = torch.tensor([[focal, 0, cx - left], [0, focal, cy - top], [0, 0, 1]])
        return sample
