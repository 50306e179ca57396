"""KITTI depth on the Eigen split (the raw KITTI drives plus the annotated depth maps).

Split lines are the official ``eigen_test_files_with_gt.txt`` format: ``<rgb path> <depth path>
<focal>``, e.g. ``2011_09_26/2011_09_26_drive_0002_sync/image_02/data/0000000069.png
2011_09_26_drive_0002_sync/proj_depth/groundtruth/image_02/0000000069.png 721.5377``; lines whose depth
is ``None`` have no ground truth and are skipped (counted). RGB paths are under ``root``, depth paths
under ``depth_root`` (default: ``root``). Depth PNGs are 16-bit, ``metres = value / 256``, 0 = no
measurement.

Frames get the KITTI benchmark crop (the bottom 352 rows, the centred 1216 columns), and depth is valid
where ``1e-5 < d < 80`` inside the Eigen crop box of that cropped frame. Evaluate with predictions
clipped to [1e-5, 80] m (``stablemtl-eval --min_depth 1e-5 --max_depth 80``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from stablemtl.data.augment import Augmentation
from stablemtl.data.readers.base import Entry, Reader, add_label, check_shape, new_sample
from stablemtl.data.readers.formats import read_png16, read_rgb
from stablemtl.data.readers.geometry import KITTI_BENCHMARK_HW, bottom_centre_crop

MIN_DEPTH, MAX_DEPTH = 1e-5, 80.0
# The Eigen et al. (2014) evaluation box, as fractions of the frame height and width.
EIGEN_BOX = (0.3324324, 0.91351351, 0.0359477, 0.96405229)


def eigen_mask(height: int, width: int) -> np.ndarray:
    """``(H, W)`` bool: True inside the Eigen crop box."""
    top, bottom, left, right = EIGEN_BOX
    mask = np.zeros((height, width), dtype=bool)
    mask[int(top * height) : int(bottom * height), int(left * width) : int(right * width)] = True
    return mask


class KittiDepthReader(Reader):
    """KITTI Eigen-split frames labelling metric depth, cropped to 352x1216 and returned at 176x608."""

    name = "kitti_depth"
    available_tasks = ("depth",)
    default_resolution = (176, 608)
    augmentation_default = Augmentation(hflip=True)  # a benchmark: the official code never trains on it

    def __init__(self, root, split=None, *args, depth_root: str | Path | None = None, **kwargs) -> None:
        self.depth_root = Path(depth_root) if depth_root is not None else Path(root)
        if not self.depth_root.is_dir():
            raise ValueError(f"kitti_depth: depth_root {str(self.depth_root)!r} is not a folder")
        if split is None:
            raise ValueError("kitti_depth needs a split file (e.g. eigen_test_files_with_gt.txt)")
        super().__init__(root, split, *args, **kwargs)

    def parse_line(self, fields: list[str]) -> Entry | None:
        if len(fields) < 2:
            raise ValueError("expected '<rgb path> <depth path> [focal]'")
        if fields[1] == "None":
            return None
        return {"rgb": self.root / fields[0], "depth": self.depth_root / fields[1]}  # the focal is unused

    def files(self, entry: Entry, tasks: Sequence[str]) -> list[Path]:
        return [entry["rgb"], entry["depth"]]

    def load(self, entry: Entry, tasks: Sequence[str]) -> dict:
        height, width = KITTI_BENCHMARK_HW
        image = read_rgb(entry["rgb"]).permute(1, 2, 0).numpy()
        depth = read_png16(entry["depth"], 1).astype(np.float32) / 256.0
        check_shape(depth, image.shape[:2], str(entry["depth"]))
        image, _, _ = bottom_centre_crop(image, height, width)
        depth, _, _ = bottom_centre_crop(depth, height, width)
        sample = new_sample(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))
        valid = (depth > MIN_DEPTH) & (depth < MAX_DEPTH) & eigen_mask(height, width)
        add_label(sample, "depth", depth[None], valid)
        return sample
