"""KITTI Eigen depth reader: /256 depth, the benchmark crop, the Eigen box, 'None' lines counted."""

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from stablemtl.data import load_source
from stablemtl.data.readers.formats import write_png16

H, W = 360, 1230  # larger than the 352 x 1216 benchmark crop: offsets (8, 7)


@pytest.fixture
def kitti(tmp_path):
    raw, gt = tmp_path / "raw", tmp_path / "gt"
    image_dir = raw / "2011_09_26/2011_09_26_drive_0002_sync/image_02/data"
    depth_dir = gt / "2011_09_26_drive_0002_sync/proj_depth/groundtruth/image_02"
    image_dir.mkdir(parents=True)
    depth_dir.mkdir(parents=True)
    image = np.zeros((H, W, 3), np.uint8)
    image[8:, 7:1223] = 200  # the crop is exactly the bright part
    Image.fromarray(image).save(image_dir / "0000000069.png")
    depth = np.full((H, W), 3200, np.uint16)  # 12.5 m
    depth[8 + 200, 7 + 600] = 0  # no measurement
    depth[8 + 200, 7 + 601] = 256 * 90  # 90 m: beyond the cap
    write_png16(depth_dir / "0000000069.png", depth)
    split = tmp_path / "eigen_test_files_with_gt.txt"
    split.write_text(
        "2011_09_26/2011_09_26_drive_0002_sync/image_02/data/0000000069.png "
        "2011_09_26_drive_0002_sync/proj_depth/groundtruth/image_02/0000000069.png 721.5377\n"
        "2011_09_26/2011_09_26_drive_0002_sync/image_02/data/0000000070.png None 721.5377\n"
    )
    return raw, gt, split


def test_depth_in_metres_inside_the_eigen_box_after_the_benchmark_crop(kitti, caplog):
    raw, gt, split = kitti
    spec = {"reader": "kitti_depth", "root": raw, "depth_root": gt, "split": split, "resolution": None}
    with caplog.at_level(logging.INFO):
        reader = load_source(spec)
    assert len(reader) == 1 and "1 line(s)" in caplog.text  # the 'None' line, counted
    sample = reader[0]
    assert sample["image"].shape == (3, 352, 1216) and torch.all(sample["image"] > 0.7)
    depth, valid = sample["labels"]["depth"][0], sample["valid"]["depth"]
    assert depth[250, 300].item() == pytest.approx(12.5)
    assert valid[250, 300] and not valid[200, 600] and not valid[200, 601]
    assert not valid[10, 300] and not valid[250, 5]  # outside the Eigen box (rows 117.., columns 43..)
    assert valid[117, 43] and not valid[116, 43] and not valid[117, 42]


def test_default_resolution_is_half_the_crop(kitti):
    raw, gt, split = kitti
    sample = load_source({"reader": "kitti_depth", "root": raw, "depth_root": gt, "split": split})[0]
    assert sample["image"].shape == (3, 176, 608)
    with pytest.raises(ValueError, match="needs a split file"):
        load_source("kitti_depth:" + str(raw))
